//! The call into EL2 (FreeBSD 15.0 `sys/arm64/vmm/vmm_call.S`: `vmm_call_hyp` is
//! `hvc #0; ret`, arguments in x0..x7, result in x0).
//!
//! At load, vmm.ko calls the hyp stub FreeBSD's locore left at EL2 with x0 = physical
//! address of the new vector table (the stub's only service); after that the same
//! instruction reaches the module's own EL2 code (`sys/arm64/vmm/hyp.h` function ids).

/// `hvc #0` with x0..x7 = `args`, returning x0.
///
/// The EL2 side is treated like a C callee: every caller-saved register (x0-x17, x30)
/// may be clobbered; x18 (the per-CPU pointer) and the callee-saved registers are
/// preserved by both FreeBSD's stub and our EL2 code.
///
/// # Safety
/// Must run at EL1 on a CPU whose EL2 vectors are known (the FreeBSD stub or the
/// module's, installed on *this* CPU); the arguments must be what the EL2 function
/// expects (addresses mapped for EL2, interrupts disabled around guest entry).
#[cfg(target_arch = "aarch64")]
#[inline]
pub unsafe fn vmm_call_hyp(args: [u64; 8]) -> u64 {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = args;
    let ret: u64;
    // SAFETY: the caller guarantees the EL2 side accepts this call; the operands name
    // every register the instruction's callee may change.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inlateout("x0") a0 => ret,
            inlateout("x1") a1 => _,
            inlateout("x2") a2 => _,
            inlateout("x3") a3 => _,
            inlateout("x4") a4 => _,
            inlateout("x5") a5 => _,
            inlateout("x6") a6 => _,
            inlateout("x7") a7 => _,
            lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
            lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
            lateout("x16") _, lateout("x17") _, lateout("x30") _,
            options(nostack),
        );
    }
    ret
}
