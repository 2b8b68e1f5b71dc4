//! Bringing the EL2 code up on every CPU and taking it down again, through the hyp-stub
//! contract FreeBSD's locore leaves (DESIGN.md, "The EL2 contract"), and the EL2 and
//! stage-2 control register values the core computes for it.
//!
//! Per CPU, on load:
//! 1. `hvc #0` with x0 = physical address of the blob's init vectors: the stub sets
//!    VBAR_EL2 to it.
//! 2. `hvc #0` with x0 = TTBR0_EL2 (the host's identity EL2 tables), x1 = top of this
//!    CPU's EL2 stack, x2 = TCR_EL2, x3 = SCTLR_EL2, x4 = VTCR_EL2: the blob's init
//!    handler installs its real vectors, turns the EL2 MMU on and returns 0.
//!
//! On unload: `HYP_CLEANUP` with x1 = physical address of the stub's vectors; the blob
//! puts them back and turns the EL2 MMU off, leaving EL2 as locore left it.
//!
//! On a VHE host the kernel itself runs at EL2: there is no stub and no blob, nothing
//! to bring up or take down; the host runs the world switch and the EL2 maintenance in
//! place (`Host::enter_guest`, `Host::hyp_call`).

use crate::errno::{Errno, KResult};
use vmm_sys::arm64::regs::{parange_bits, vtcr};

/// The host's ID registers, read by `vmm_arm64` where the host runs.
pub use vmm_arm64::IdRegs;

/// Where the host kernel runs, and so how the core reaches EL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum El2Regime {
    /// The kernel runs at EL1 under FreeBSD's hyp stub: the core brings its EL2 blob up
    /// on every CPU through the stub, and takes it down again.
    Nvhe {
        /// Physical address of the EL2 blob's init vector table (2 KiB aligned), already
        /// mapped for EL2 together with the rest of the blob.
        hyp_init_vectors_pa: u64,
        /// Physical address of the hyp stub's vectors, restored by `HYP_CLEANUP`.
        hyp_stub_vectors_pa: u64,
        /// TTBR0_EL2: the host's identity-mapped EL2 translation tables
        /// ([`crate::Host::map_el2`] adds to them).
        el2_ttbr0: u64,
    },
    /// The kernel runs at EL2 with HCR_EL2.E2H (VHE): nothing to bring up; the host's
    /// `hyp_call` answers the core's EL2 requests (register reads, stage-2 TLB
    /// maintenance) in place and its `enter_guest` calls the world switch directly.
    Vhe,
}

/// What the host glue hands to [`crate::Vmm::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    pub regime: El2Regime,
    pub id_regs: IdRegs,
    /// The most guest memory (bytes, over all VMs) the core allocates: a segment that
    /// would go past it is refused with `ENOMEM` before anything is allocated. The
    /// host sets it from its own memory size (FreeBSD: physical memory less a reserve,
    /// `hw.vmm.maxmem`); [`crate::Vmm::set_max_guest_mem`] changes it.
    pub max_guest_mem: u64,
}

/// EL2 stack per CPU: 4 pages, as FreeBSD's `VMM_STACK_PAGES`.
pub const EL2_STACK_SIZE: usize = 4 * crate::host::PAGE_SIZE;

/// TCR_EL2 (non-VHE) RES1 bits 31 and 23.
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);
/// TCR_EL2.T0SZ for a 48-bit EL2 address space.
const TCR_EL2_T0SZ_48: u64 = 64 - 48;
/// PS encoding for 48 bits; larger PARanges are capped there (4 KiB granule, no LPA).
const PS_48: u64 = 5;

/// The stage-2 address-space geometry for a VM: how many IPA bits, at which level the
/// walk starts, how many concatenated tables the root has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S2Geometry {
    pub ipa_bits: u32,
    /// 0 or 1: the level the walk starts at.
    pub start_level: u32,
    /// Concatenated root tables (1, 2, 4, 8 or 16), each one page.
    pub root_pages: usize,
}

impl S2Geometry {
    /// The geometry for `ipa_bits` (32..=48) with a 4 KiB granule: up to 39 bits one
    /// level-1 table; 40..=42 bits start at level 1 too, with 2, 4 or 8 concatenated
    /// level-1 tables (as FreeBSD and KVM do, saving a level of walk); above that the
    /// walk starts at level 0.
    pub fn new(ipa_bits: u32) -> KResult<S2Geometry> {
        match ipa_bits {
            32..=39 => Ok(S2Geometry {
                ipa_bits,
                start_level: 1,
                root_pages: 1,
            }),
            40..=42 => Ok(S2Geometry {
                ipa_bits,
                start_level: 1,
                // 2, 4 or 8 level-1 tables side by side (ipa_bits - 39 extra bits).
                root_pages: 1usize << ipa_bits.saturating_sub(39),
            }),
            43..=48 => Ok(S2Geometry {
                ipa_bits,
                start_level: 0,
                root_pages: 1,
            }),
            _ => Err(Errno::ENXIO),
        }
    }

    /// One past the highest IPA.
    pub const fn ipa_limit(&self) -> u64 {
        1u64 << self.ipa_bits
    }
}

/// The values computed once at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct El2Config {
    pub tcr_el2: u64,
    pub sctlr_el2: u64,
    pub vtcr_el2: u64,
    pub s2: S2Geometry,
    /// The PARange field of the host (ID_AA64MMFR0_EL1[3:0]).
    pub parange: u64,
}

impl El2Config {
    /// Computes TCR_EL2, SCTLR_EL2 and VTCR_EL2 from the host's ID_AA64MMFR0_EL1, with
    /// a guest IPA space of `min(wanted_ipa_bits, host PA bits)` (FreeBSD does the same
    /// in `vmmops_modinit`). Hosts with a 32-bit PA range are refused (`ENXIO`): guest
    /// RAM starts at 2 GiB and would not fit beside the devices.
    pub fn new(mmfr0: u64, wanted_ipa_bits: u32) -> KResult<El2Config> {
        let parange = mmfr0 & 0xf;
        let pa_bits = parange_bits(parange).ok_or(Errno::ENXIO)?;
        if pa_bits < 36 {
            return Err(Errno::ENXIO);
        }
        let ipa_bits = wanted_ipa_bits.min(pa_bits);
        let s2 = S2Geometry::new(ipa_bits)?;
        let ps = parange.min(PS_48);
        let tcr_el2 = TCR_EL2_RES1
            | (ps << 16)
            | vtcr::TG0_4K
            | vtcr::SH0_IS
            | vtcr::ORGN0_WBWA
            | vtcr::IRGN0_WBWA
            | TCR_EL2_T0SZ_48;
        let sl0 = if s2.start_level == 0 {
            vtcr::SL0_4K_L0
        } else {
            vtcr::SL0_4K_L1
        };
        let vtcr_el2 = vtcr::RES1
            | (ps << vtcr::PS_SHIFT)
            | vtcr::TG0_4K
            | vtcr::SH0_IS
            | vtcr::ORGN0_WBWA
            | vtcr::IRGN0_WBWA
            | sl0
            | u64::from(64u32.saturating_sub(ipa_bits));
        Ok(El2Config {
            tcr_el2,
            sctlr_el2: sctlr_el2_value(),
            vtcr_el2,
            s2,
            parange,
        })
    }
}

/// SCTLR_EL2 for the blob: MMU, data and instruction caches and SP alignment checks on,
/// little-endian. Alignment checking (A) stays off because the blob is compiled Rust,
/// which may emit unaligned accesses to normal memory; WXN stays off because the host
/// builds the EL2 tables and decides their permissions.
pub const fn sctlr_el2_value() -> u64 {
    use vmm_sys::arm64::regs::sctlr_el2 as s;
    s::RES1 | s::M | s::C | s::I | s::SA
}
