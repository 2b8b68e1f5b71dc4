//! How the kernel entered and left EL2 (FreeBSD 15.0 sys/arm64/arm64/machdep.c,
//! sys/arm64/arm64/hyp_stub.S; declared in `sys/arm64/include/machdep.h` and, for the
//! vectors, by the users themselves as `extern char hyp_stub_vectors[]`).
//!
//! * `has_hyp()`: the kernel was entered at EL2 and dropped to EL1 leaving the hyp
//!   stub behind (`boot_el == CURRENTEL_EL_EL2` without `HCR_EL2.E2H`). Without it an
//!   `hvc` reaches no stub (or a firmware / outer hypervisor), so vmm must not load.
//! * `hyp_stub_vectors`: locore's stub vector table; `HYP_CLEANUP` is given its
//!   physical address to restore it on unload (`vtophys(hyp_stub_vectors)` in
//!   FreeBSD's vmm_arm64.c).
//! * VHE: a kernel that runs at EL2 (CurrentEL == 2) uses VHE; the module reads
//!   CurrentEL itself (`in_vhe()` is that read).

use core::ffi::c_char;

extern "C" {
    /// `bool has_hyp(void)`.
    pub fn has_hyp() -> bool;
    /// `char hyp_stub_vectors[]`: only its address is used.
    pub static hyp_stub_vectors: [c_char; 0];
}

/// The exception level in a `CurrentEL` value (bits 3:2).
pub const fn current_el(reg: u64) -> u64 {
    (reg >> 2) & 3
}

/// `ID_AA64PFR0_EL1.GIC` (bits 27:24): non-zero when the GICv3/4 system-register CPU
/// interface is implemented, which the EL2 code's ICH_* accesses and the guest's
/// ICC_* registers need.
pub const fn pfr0_gic(pfr0: u64) -> u64 {
    (pfr0 >> 24) & 0xf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_current_el_and_gic_field() {
        assert_eq!(current_el(0b0100), 1);
        assert_eq!(current_el(0b1000), 2);
        assert_eq!(pfr0_gic(0x0000_0000_0100_0022), 1);
        assert_eq!(pfr0_gic(0x0000_0000_0000_0022), 0);
    }
}
