//! Interrupt hooks vmm needs (FreeBSD 15.0 `sys/arm/arm/generic_timer.h`,
//! `sys/sys/bus.h`).
//!
//! * Virtual timer: FreeBSD's vtimer (sys/arm64/vmm/io/vtimer.c `vtimer_init`) takes the
//!   host's virtual-timer PPI with `arm_tmr_setup_intr(GT_VIRT, filter, NULL, NULL)`;
//!   the filter masks `CNTV_CTL_EL0` (the guest's timer fired while the guest was not
//!   running) and returns `FILTER_HANDLED`. On failure vmm only warns ("Expect reduced
//!   performance").
//! * vGIC maintenance interrupt: FreeBSD 15's vgic (sys/arm64/vmm/io/vgic_v3.c)
//!   registers no handler. The vgic is a newbus child of the GIC driver and probes
//!   with `gic_get_vgic()`/`gic_get_hw_rev()`; the maintenance condition is seen at EL2
//!   on the guest's IRQ exit (`ICH_MISR_EL2 != 0` gives `EXCP_TYPE_MAINT_IRQ`) and the
//!   run loop re-enters the guest after syncing the list registers. The world switch
//!   clears `ICH_HCR_EL2.En` on exit, so the host never takes it. (The 2019 research
//!   port used `gic_v3_setup_maint_intr`, which no longer exists.)

use core::ffi::{c_int, c_void};

/// Timer selectors of `arm_tmr_setup_intr` (`generic_timer.h`).
pub const GT_PHYS_SECURE: c_int = 0;
pub const GT_PHYS_NONSECURE: c_int = 1;
pub const GT_VIRT: c_int = 2;

/// Filter return values (`sys/sys/bus.h`).
pub const FILTER_STRAY: c_int = 0x01;
pub const FILTER_HANDLED: c_int = 0x02;
pub const FILTER_SCHEDULE_THREAD: c_int = 0x04;

/// `driver_filter_t`: `int (*)(void *)`, runs in interrupt context.
pub type DriverFilter = unsafe extern "C" fn(*mut c_void) -> c_int;
/// `driver_intr_t`: `void (*)(void *)`, runs in an interrupt thread.
pub type DriverIntr = unsafe extern "C" fn(*mut c_void);

extern "C" {
    /// `int arm_tmr_setup_intr(int gt_type, driver_filter_t filter,
    /// driver_intr_t handler, void *arg)` (sys/arm/arm/generic_timer.c).
    pub fn arm_tmr_setup_intr(
        gt_type: c_int,
        filter: Option<DriverFilter>,
        handler: Option<DriverIntr>,
        arg: *mut c_void,
    ) -> c_int;
    /// `int arm_tmr_teardown_intr(int gt_type)`.
    pub fn arm_tmr_teardown_intr(gt_type: c_int) -> c_int;
}
