//! Host hypercall dispatch: `hvc #0` from EL1 with VTTBR_EL2 == 0, x0 = function.
//! HYP_CLEANUP never gets here (the vector handles it without a stack frame).

use vmm_arm64::mrs;

use vmm_el2_switch::tlb;
use vmm_sys::hyp::*;

/// Entered from the runtime vector with the host's x0..x5.
#[no_mangle]
extern "C" fn el2_hypercall(func: u64, a1: u64, a2: u64, a3: u64, _a4: u64, _a5: u64) -> u64 {
    match func {
        HYP_ENTER_GUEST => {
            if a1 == 0 || !a1.is_multiple_of(16) {
                return HYP_RET_UNKNOWN;
            }
            // SAFETY: the host passes the EL2 address of a context it mapped at EL2 and
            // does not touch while this CPU runs it (the HYP_ENTER_GUEST contract).
            unsafe { vmm_el2_switch::enter_guest(a1 as *mut VcpuContext) }
        }
        HYP_READ_REGISTER => match a1 {
            HYP_REG_ICH_VTR => mrs!("ich_vtr_el2"),
            HYP_REG_CNTHCTL => mrs!("cnthctl_el2"),
            _ => HYP_RET_UNKNOWN,
        },
        HYP_CLEAN_S2_TLBI => {
            tlb::all_guests::<false>();
            0
        }
        HYP_DC_CIVAC => {
            // SAFETY: the host names memory it mapped for EL2 (the HYP_DC_CIVAC contract).
            unsafe { vmm_arm64::cache::clean_inval_dcache_poc(a1 as usize, a2 as usize) };
            0
        }
        HYP_EL2_TLBI => match a1 {
            HYP_EL2_TLBI_ALL => {
                // SAFETY: invalidates EL2's own TLB entries.
                unsafe { core::arch::asm!("tlbi alle2is", "dsb ish", "isb", options(nostack)) };
                0
            }
            HYP_EL2_TLBI_VA => {
                let end = a2.saturating_add(a3);
                let mut va = a2 & !0xfff;
                while va < end {
                    // SAFETY: invalidates one EL2 VA.
                    unsafe {
                        core::arch::asm!("tlbi vae2is, {0}", in(reg) va >> 12, options(nostack))
                    };
                    va = va.saturating_add(0x1000);
                }
                // SAFETY: barriers.
                unsafe { core::arch::asm!("dsb ish", "isb", options(nostack)) };
                0
            }
            _ => HYP_RET_UNKNOWN,
        },
        HYP_S2_TLBI_RANGE => {
            tlb::s2_tlbi_range::<false>(a1, a2, a3);
            0
        }
        HYP_S2_TLBI_ALL => {
            tlb::s2_tlbi_all::<false>(a1);
            0
        }
        HYP_VGIC_CLEAR => {
            vmm_el2_switch::vgic_clear();
            0
        }
        _ => HYP_RET_UNKNOWN,
    }
}
