//! The host thread's FP/SIMD and SVE state around a guest's run (FreeBSD 15.0
//! `sys/arm64/include/vfp.h`, `sys/arm64/arm64/vfp.c`, `sys/sys/pcpu.h`).
//!
//! The world switch keeps V0-V31, FPCR and FPSR of whatever the host had live, but a V
//! register write clears the upper bits of the matching SVE Z register. FreeBSD's own
//! vmm therefore flushes the thread's state to its PCB before it enters a guest
//! (`restore_guest_fpustate` in sys/arm64/vmm/vmm.c): `vfp_save_state(curthread,
//! curthread->td_pcb)` stores it (SVE too, where the thread's SVE state must survive)
//! and disables FP for the kernel, and `pc_fpcurthread = NULL` makes the thread's next
//! FP use reload from the PCB. The glue does the same before each guest entry; once the
//! state is flushed `vfp_save_state` returns at once (FP is disabled), so later entries
//! pay one call.
//!
//! `struct pcpu` starts with `pc_curthread`, `pc_idlethread`, `pc_fpcurthread`,
//! `pc_deadthread` and `pc_curpcb` (five pointers, in every tree since FreeBSD 10; the
//! `pc_cpuid` probe in smp.rs relies on the same prefix), and `pc_curpcb` is the
//! running thread's `td_pcb`, so no `struct thread` layout is needed.

use core::ffi::c_void;

/// Offset of `struct thread *pc_fpcurthread` in `struct pcpu`.
pub const PC_FPCURTHREAD_OFFSET: usize = 16;
/// Offset of `struct pcb *pc_curpcb` in `struct pcpu`.
pub const PC_CURPCB_OFFSET: usize = 32;

extern "C" {
    /// `void vfp_save_state(struct thread *, struct pcb *)`: stores the thread's live
    /// FP/SIMD (and SVE) registers in the PCB and disables FP; does nothing when FP is
    /// already disabled. Takes a critical section of its own.
    pub fn vfp_save_state(td: *mut c_void, pcb: *mut c_void);
}

/// Flushes the current thread's FP/SIMD and SVE state to its PCB and forgets this CPU's
/// FP owner, as FreeBSD's vmm does before it runs a guest.
#[cfg(target_arch = "aarch64")]
pub fn flush_thread_fp() {
    let pcpu = crate::smp::vmm_freebsd_pcpu().cast::<u8>();
    // SAFETY: x18 points at this CPU's live `struct pcpu`, whose first five members are
    // pointers (module docs); interrupts are disabled (the caller's contract), so the
    // thread cannot migrate and `pc_curpcb` is its PCB. vfp_save_state takes exactly
    // these two; clearing pc_fpcurthread is what FreeBSD's vmm does after it.
    unsafe {
        let td = crate::smp::curthread().cast::<c_void>();
        let pcb = pcpu
            .add(PC_CURPCB_OFFSET)
            .cast::<*mut c_void>()
            .read_volatile();
        vfp_save_state(td, pcb);
        pcpu.add(PC_FPCURTHREAD_OFFSET)
            .cast::<*mut c_void>()
            .write_volatile(core::ptr::null_mut());
    }
}
