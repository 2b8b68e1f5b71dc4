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

//! * Holding the host's virtual-timer PPI while a guest whose timer fired is entered
//!   (docs/vgic.md, "The virtual timer's interrupt while the guest runs"): FreeBSD has
//!   no KPI for an interrupt's active state (Linux's `irq_set_irqchip_state`, which KVM
//!   uses), and `PIC_DISABLE_INTR` needs the timer driver's private `intr_irqsrc`. The
//!   GICv3 driver exports `gic_r_write_4(dev, offset, value)` (sys/arm64/arm64/
//!   gic_v3_var.h, used by the ITS driver), which writes the *current CPU's*
//!   redistributor (`sc->gic_redists.pcpu[PCPU_GET(cpuid)]`); offsets are from RD_base,
//!   the SGI frame at `GICR_SGI_BASE_SIZE` (64 KiB). So, as KVM does, the glue sets PPI
//!   27 active with GICR_ISACTIVER0 and clears it with GICR_ICACTIVER0, on the GIC
//!   device found as unit 0 of devclass "gic" (the GICv3 driver's class name, FDT and
//!   ACPI attachments alike).

use core::ffi::{c_char, c_int, c_void};

/// The SGI_base frame of a redistributor, from its RD_base (`GICR_SGI_BASE_SIZE`).
pub const GICR_SGI_BASE_SIZE: u64 = 0x1_0000;
/// GICR_ISACTIVER0 / GICR_ICACTIVER0 in the SGI frame (`GICD_ISACTIVER(0)` /
/// `GICD_ICACTIVER(0)`, the offsets FreeBSD reuses for the redistributor).
pub const GICR_ISACTIVER0: u64 = 0x0300;
pub const GICR_ICACTIVER0: u64 = 0x0380;
/// GICR_ISENABLER0 / GICR_ICENABLER0 in the SGI frame.
pub const GICR_ISENABLER0: u64 = 0x0100;
pub const GICR_ICENABLER0: u64 = 0x0180;

/// `device_t`, `devclass_t`: opaque pointers.
pub type DeviceT = *mut c_void;
pub type DevclassT = *mut c_void;

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
    /// `devclass_t devclass_find(const char *classname)` (sys/sys/bus.h): NULL if none.
    pub fn devclass_find(classname: *const c_char) -> DevclassT;
    /// `device_t devclass_get_device(devclass_t dc, int unit)`: NULL if no such unit.
    pub fn devclass_get_device(dc: DevclassT, unit: c_int) -> DeviceT;
    /// `void gic_r_write_4(device_t dev, bus_size_t offset, uint32_t val)`
    /// (sys/arm64/arm64/gic_v3_var.h): a 32-bit write to the calling CPU's
    /// redistributor.
    pub fn gic_r_write_4(dev: DeviceT, offset: u64, val: u32);
}
