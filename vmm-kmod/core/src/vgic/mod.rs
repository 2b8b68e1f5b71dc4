//! The virtual GICv3: distributor and redistributor MMIO emulation, interrupt state,
//! injection (SPI lines, PPIs, SGIs, MSIs through GICD_SETSPI_NSR) and the list
//! registers of the hardware virtual CPU interface.
//!
//! One [`Vgic`] per VM. It is plain data behind `&mut self`: the core keeps it in a
//! host mutex (`sync::Mutex<H::Mutex, Option<Vgic>>`) and takes that lock around every
//! call, never across a guest entry. Nothing here sleeps, allocates after
//! construction, or panics on any guest or user input.
//!
//! Every call that can make an interrupt deliverable returns [`Kicks`]: the vCPUs the
//! core must notify (IPI if running, wakeup if in WFI) so they pick it up.
//!
//! The guest-visible ICC_* system registers other than the SGI generators are the
//! hardware's (through ICH_VMCR_EL2 and the list registers): nothing to emulate.
//! See docs/vgic.md for the facts this follows and how the core calls it.

pub mod dist;
pub mod irq;
pub mod lr;
pub mod redist;

use crate::errno::{Errno, KResult};
use alloc::vec::Vec;
use irq::{Irq, NO_OWNER, NO_TARGET};
use vmm_sys::abi::VmVgicDescr;
use vmm_sys::arm64::sysreg::{self, SysReg};
use vmm_sys::hyp::ICH_LR_MAX;

/// What VM_GET_VGIC_VERSION answers.
pub const VGIC_VERSION: u32 = 3;
/// SPIs the distributor implements: INTIDs 32..128. The platform's devices use 32..55
/// (PL011 32, PL031 33, NS16550 34, virtio-mmio 48..55); the rest are free for MSIs
/// through GICD_SETSPI_NSR. A multiple of 32 (GICD_TYPER.ITLinesNumber counts blocks).
pub const NR_SPIS: u32 = 96;
// `Vgic::spi_maybe_live` has a bit per SPI.
const _: () = assert!(NR_SPIS <= 128);
/// One past the highest INTID.
pub const NR_IRQS: u32 = 32 + NR_SPIS;
/// Most vCPUs a vGIC serves (the platform's redistributor window, [`Kicks`] width).
pub const MAX_CPUS: usize = 16;
/// The distributor window (GICD) size.
pub const DIST_SIZE: u64 = 0x1_0000;
/// One redistributor: RD_base frame and SGI_base frame, 64 KiB each.
pub const REDIST_STRIDE: u64 = 0x2_0000;
/// Alignment of both windows (a GIC frame).
pub const FRAME_ALIGN: u64 = 0x1_0000;
/// The priority bits a guest can set: 5, the fewest a GICv3 virtual interface may
/// implement (ICH_VTR_EL2.PRIbits >= 4 means 5 bits), as KVM's VGIC_PRI_BITS. The low
/// bits read as zero, which is how a guest probes the width.
pub const PRIORITY_MASK: u8 = 0xf8;

/// First SPI INTID.
pub const SPI_BASE: u32 = 32;
/// First PPI INTID.
pub const PPI_BASE: u32 = 16;

/// A set of vCPU ids (bit n = vCPU n) the core must notify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kicks(pub u32);

impl Kicks {
    pub fn add(&mut self, vcpu: usize) {
        if let Ok(n) = u32::try_from(vcpu) {
            self.0 |= 1u32.checked_shl(n).unwrap_or(0);
        }
    }
    pub fn contains(&self, vcpu: usize) -> bool {
        u32::try_from(vcpu)
            .ok()
            .and_then(|n| self.0.checked_shr(n))
            .is_some_and(|v| v & 1 != 0)
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn merge(&mut self, o: Kicks) {
        self.0 |= o.0;
    }
    /// The vCPU ids in the set, lowest first: one step per member (the set is most
    /// often empty, and this runs after every exit).
    pub fn iter(self) -> impl Iterator<Item = usize> {
        // Only vCPU ids below MAX_CPUS exist.
        let ids = self.0
            & 1u32
                .checked_shl(MAX_CPUS as u32)
                .map_or(u32::MAX, |b| b.wrapping_sub(1));
        marked(u128::from(ids)).filter_map(|n| usize::try_from(n).ok())
    }
}

/// An SPI: its state and its route (GICD_IROUTER).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spi {
    irq: Irq,
    /// GICD_IROUTER as written (Aff3, IRM, Aff2..0).
    route: u64,
    /// The vCPU the route resolves to, or [`NO_TARGET`].
    target: u8,
}

/// Per-vCPU state: the redistributor and the list-register bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Cpu {
    mpidr: u64,
    /// SGIs 0..16 and PPIs 16..32. Changed only through [`Cpu::private_mut`].
    pub(crate) private: [Irq; 32],
    /// Bit n: private interrupt n may be active or pending (as `Vgic::spi_maybe_live`
    /// for the SPIs: set by every change, cleared by `flush` when it finds it idle).
    pub(crate) private_maybe_live: u32,
    /// GICR_WAKER.ProcessorSleep (ChildrenAsleep mirrors it at once).
    asleep: bool,
    /// The INTID in each list register `flush` filled, for `sync`.
    lr_intid: [u32; ICH_LR_MAX],
    /// How many list registers `flush` filled.
    lr_used: usize,
    /// ICH_VMCR_EL2 as of the last exit (the guest's PMR and group enables).
    vmcr: u64,
    /// The `Vgic::epoch` at which `flush` last found nothing to put in a list register:
    /// until the state changes, the next flush can skip the scan.
    pub(crate) idle_epoch: Option<u64>,
    /// A private interrupt of this vCPU may have changed since `flush` last looked
    /// (set with every mutable access to one, which changes no epoch: an SGI another
    /// vCPU sends, its timers' PPIs, its folded list registers). So the sender of an
    /// IPI, idle, keeps its quick flush.
    pub(crate) private_changed: bool,
}

impl Cpu {
    fn new(mpidr: u64) -> Cpu {
        let mut private = [Irq::new(false); 32];
        // SGIs are always edge-triggered (GICR_ICFGR0 is read-only 0xaaaa_aaaa).
        for sgi in private.iter_mut().take(16) {
            sgi.edge = true;
        }
        Cpu {
            mpidr,
            private,
            private_maybe_live: 0,
            asleep: true,
            lr_intid: [0; ICH_LR_MAX],
            lr_used: 0,
            vmcr: 0,
            idle_epoch: None,
            private_changed: false,
        }
    }

    /// Private interrupt `n` to change: marked as possibly live, and this vCPU as
    /// changed, for `flush`.
    fn private_mut(&mut self, n: usize) -> Option<&mut Irq> {
        self.private_maybe_live |= 1u32.checked_shl(u32::try_from(n).ok()?).unwrap_or(0);
        self.private_changed = true;
        self.private.get_mut(n)
    }

    /// The private interrupts marked as possibly live: (INTID, state), lowest first.
    pub(crate) fn marked_private(&self) -> impl Iterator<Item = (u32, &Irq)> {
        marked(u128::from(self.private_maybe_live))
            .filter_map(|n| Some((n, self.private.get(usize::try_from(n).ok()?)?)))
    }
}

/// The set bits of `bits`, lowest first: one step per member.
pub(crate) fn marked(mut bits: u128) -> impl Iterator<Item = u32> {
    core::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let n = bits.trailing_zeros();
        // Clears the lowest set bit.
        bits &= bits.wrapping_sub(1);
        Some(n)
    })
}

/// The virtual GICv3 of one VM.
#[derive(Debug, Clone)]
pub struct Vgic {
    dist_base: u64,
    redist_base: u64,
    /// List registers per CPU (ICH_VTR_EL2.ListRegs + 1, at most 16).
    nr_lrs: usize,
    /// GICD_CTLR.EnableGrp0 (bit 0) and EnableGrp1 (bit 1).
    ctlr: u32,
    pub(crate) spis: Vec<Spi>,
    /// Bit n: SPI `SPI_BASE + n` may be active or pending, so `flush` must look at it.
    /// A superset: every mutable access to an SPI ([`Vgic::spi_mut`]) sets its bit,
    /// and only `flush` clears the bits of SPIs it finds idle. The flush's scan then
    /// skips the SPIs nothing touched, most of them on most entries.
    pub(crate) spi_maybe_live: u128,
    pub(crate) cpus: Vec<Cpu>,
    /// Bumped by every change that could give some vCPU something to see (register
    /// writes, injections, folded list registers) but those to one vCPU's private
    /// interrupts alone, which mark that vCPU instead (`Cpu::private_changed`): `flush`
    /// skips its scan for a vCPU that was idle at the current epoch and is not marked.
    /// Every exit pays a flush, so the common case (nothing pending anywhere) must cost
    /// next to nothing.
    pub(crate) epoch: u64,
}

/// The affinity fields of an MPIDR or IROUTER: Aff3 [39:32], Aff2..Aff0 [23:0].
pub const AFF_MASK: u64 = 0xff_00ff_ffff;
/// GICD_IROUTER.Interrupt_Routing_Mode: any participating PE.
pub const IROUTER_IRM: u64 = 1 << 31;

/// Checks a VM_ATTACH_VGIC request for a VM of `ncpus` vCPUs whose RAM occupies the
/// `(base, size)` ranges of `ram`, in an IPA space ending at `ipa_limit`: version 3,
/// the distributor window exactly 64 KiB, the redistributors exactly `ncpus` x 128 KiB,
/// both 64 KiB aligned, inside the IPA space, apart from each other and from RAM.
/// `EINVAL` otherwise.
pub fn validate_attach(
    d: &VmVgicDescr,
    ncpus: usize,
    ram: &[(u64, u64)],
    ipa_limit: u64,
) -> KResult<()> {
    let r = &d.v3_regs;
    if d.ver.version != VGIC_VERSION || ncpus == 0 || ncpus > MAX_CPUS {
        return Err(Errno::EINVAL);
    }
    let want_redist = u64::try_from(ncpus)
        .ok()
        .and_then(|n| n.checked_mul(REDIST_STRIDE))
        .ok_or(Errno::EINVAL)?;
    if r.dist_size != DIST_SIZE || r.redist_size != want_redist {
        return Err(Errno::EINVAL);
    }
    if !r.dist_start.is_multiple_of(FRAME_ALIGN) || !r.redist_start.is_multiple_of(FRAME_ALIGN) {
        return Err(Errno::EINVAL);
    }
    let dist_end = r.dist_start.checked_add(r.dist_size).ok_or(Errno::EINVAL)?;
    let redist_end = r
        .redist_start
        .checked_add(r.redist_size)
        .ok_or(Errno::EINVAL)?;
    if dist_end > ipa_limit || redist_end > ipa_limit {
        return Err(Errno::EINVAL);
    }
    let overlaps = |b0: u64, e0: u64, b1: u64, e1: u64| b0 < e1 && b1 < e0;
    if overlaps(r.dist_start, dist_end, r.redist_start, redist_end) {
        return Err(Errno::EINVAL);
    }
    for &(base, size) in ram {
        let end = base.saturating_add(size);
        if overlaps(r.dist_start, dist_end, base, end)
            || overlaps(r.redist_start, redist_end, base, end)
        {
            return Err(Errno::EINVAL);
        }
    }
    Ok(())
}

impl Vgic {
    /// A vGIC for vCPUs whose MPIDR_EL1 values are `mpidrs` (vCPU n has `mpidrs[n]`;
    /// its redistributor is the n-th, and the last one has GICR_TYPER.Last), with the
    /// distributor at `dist_base` and the redistributors from `redist_base`. `ich_vtr`
    /// is the host's ICH_VTR_EL2 (the number of list registers). Everything comes out
    /// of reset: GICD_CTLR with both groups disabled, every interrupt disabled, idle,
    /// group 0, priority 0, routed to Aff 0.0.0.0, redistributors asleep. `EINVAL` for
    /// no vCPUs, more than [`MAX_CPUS`], two vCPUs with one affinity, or unaligned
    /// bases.
    pub fn new(mpidrs: &[u64], dist_base: u64, redist_base: u64, ich_vtr: u64) -> KResult<Vgic> {
        if mpidrs.is_empty() || mpidrs.len() > MAX_CPUS {
            return Err(Errno::EINVAL);
        }
        if !dist_base.is_multiple_of(FRAME_ALIGN) || !redist_base.is_multiple_of(FRAME_ALIGN) {
            return Err(Errno::EINVAL);
        }
        for (i, a) in mpidrs.iter().enumerate() {
            if mpidrs
                .iter()
                .skip(i.saturating_add(1))
                .any(|b| (a ^ b) & AFF_MASK == 0)
            {
                return Err(Errno::EINVAL);
            }
        }
        // ListRegs is bits [4:0], the count minus one: at most 32, capped at what the
        // context holds.
        let nr_lrs = usize::try_from(ich_vtr & 0x1f)
            .unwrap_or(0)
            .saturating_add(1)
            .min(ICH_LR_MAX);
        let mut v = Vgic {
            dist_base,
            redist_base,
            nr_lrs,
            ctlr: 0,
            spis: Vec::new(),
            spi_maybe_live: 0,
            cpus: mpidrs.iter().map(|&m| Cpu::new(m)).collect(),
            epoch: 0,
        };
        v.reset();
        Ok(v)
    }

    /// [`validate_attach`], then [`Vgic::new`] at the requested windows.
    pub fn attach(
        d: &VmVgicDescr,
        mpidrs: &[u64],
        ram: &[(u64, u64)],
        ipa_limit: u64,
        ich_vtr: u64,
    ) -> KResult<Vgic> {
        validate_attach(d, mpidrs.len(), ram, ipa_limit)?;
        Vgic::new(
            mpidrs,
            d.v3_regs.dist_start,
            d.v3_regs.redist_start,
            ich_vtr,
        )
    }

    /// Returns every interrupt and redistributor to its reset state (VM_REINIT keeps
    /// the vGIC attached at the same windows).
    pub fn reset(&mut self) {
        self.touch();
        self.ctlr = 0;
        self.spis.clear();
        let spi = Spi {
            irq: Irq::new(false),
            route: 0,
            target: NO_TARGET,
        };
        self.spis.resize(NR_SPIS as usize, spi);
        // Every SPI is idle now.
        self.spi_maybe_live = 0;
        for c in self.cpus.iter_mut() {
            *c = Cpu::new(c.mpidr);
        }
        let target = self.resolve_route(0);
        for s in self.spis.iter_mut() {
            s.target = target;
        }
    }

    pub fn ncpus(&self) -> usize {
        self.cpus.len()
    }

    /// List registers per CPU the flush uses.
    pub fn nr_lrs(&self) -> usize {
        self.nr_lrs
    }

    /// The distributor window (base, size).
    pub fn dist_window(&self) -> (u64, u64) {
        (self.dist_base, DIST_SIZE)
    }

    /// The redistributor window (base, size).
    pub fn redist_window(&self) -> (u64, u64) {
        let n = u64::try_from(self.cpus.len()).unwrap_or(0);
        (self.redist_base, n.saturating_mul(REDIST_STRIDE))
    }

    /// A guest access to `gpa` of `size` bytes by vCPU `vcpu`. For a read, the value
    /// is stored in `*value` (zero-extended); for a write, `*value` is taken (only
    /// the low `size` bytes). `None` when `gpa` is not in a vGIC window: the access is
    /// someone else's. Accesses of a width the register does not allow, or at offsets
    /// that name nothing, read as zero and ignore writes (never an error, as KVM).
    pub fn mmio_access(
        &mut self,
        vcpu: usize,
        gpa: u64,
        size: u8,
        write: bool,
        value: &mut u64,
    ) -> Option<Kicks> {
        let (rb, rs) = self.redist_window();
        // (None, distributor offset) or (Some(redistributor window offset), 0).
        let access = match gpa.checked_sub(self.dist_base).filter(|&o| o < DIST_SIZE) {
            Some(off) => (None, off),
            None => (Some(gpa.checked_sub(rb).filter(|&o| o < rs)?), 0),
        };
        // A width mask; unknown sizes become RAZ/WI in the register handlers.
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            8 => u64::MAX,
            _ => 0,
        };
        if mask == 0 || vcpu >= self.cpus.len() {
            if !write {
                *value = 0;
            }
            return Some(Kicks::default());
        }
        let mut kicks = Kicks::default();
        if write {
            self.touch();
        }
        match access {
            (None, off) => {
                if write {
                    kicks = self.dist_write(off, size, *value & mask);
                } else {
                    *value = self.dist_read(off, size) & mask;
                }
            }
            (Some(roff), _) => {
                // Redistributor n owns [n * 128 KiB, (n + 1) * 128 KiB).
                let n = usize::try_from(roff / REDIST_STRIDE).unwrap_or(usize::MAX);
                let frame_off = roff % REDIST_STRIDE;
                if write {
                    kicks = self.redist_write(n, frame_off, size, *value & mask);
                } else {
                    *value = self.redist_read(n, frame_off, size) & mask;
                }
            }
        }
        Some(kicks)
    }

    // --- Interrupt lines --------------------------------------------------------------

    /// VM_ASSERT_IRQ: raises SPI `intid`'s line (level-sensitive: pending while high;
    /// edge-triggered: latches on the rising edge). `EINVAL` outside the SPIs.
    pub fn assert_spi(&mut self, intid: u32) -> KResult<Kicks> {
        self.set_spi_level(intid, true)
    }

    /// VM_DEASSERT_IRQ: lowers SPI `intid`'s line.
    pub fn deassert_spi(&mut self, intid: u32) -> KResult<Kicks> {
        self.set_spi_level(intid, false)
    }

    fn set_spi_level(&mut self, intid: u32, level: bool) -> KResult<Kicks> {
        let s = self.spi_mut(intid).ok_or(Errno::EINVAL)?;
        let before = s.irq;
        s.irq.set_level(level);
        if s.irq != before {
            self.touch();
        }
        let mut k = Kicks::default();
        self.note(&mut k, 0, intid);
        Ok(k)
    }

    /// Drives PPI `intid` (16..32) of vCPU `vcpu` (the timers' outputs). `EINVAL` for
    /// another INTID or vCPU.
    pub fn set_ppi_level(&mut self, vcpu: usize, intid: u32, level: bool) -> KResult<Kicks> {
        if !(PPI_BASE..SPI_BASE).contains(&intid) {
            return Err(Errno::EINVAL);
        }
        // The timers drive their PPIs after every exit: only a change costs a scan,
        // and only a change can give anyone new work. An unchanged line changes
        // nothing (`Irq::set_level`); looked at before the interrupt is taken for a
        // change, which marks the vCPU.
        if self.irq(vcpu, intid).ok_or(Errno::EINVAL)?.level == level {
            return Ok(Kicks::default());
        }
        self.irq_mut(vcpu, intid)
            .ok_or(Errno::EINVAL)?
            .set_level(level);
        let mut k = Kicks::default();
        self.note(&mut k, vcpu, intid);
        Ok(k)
    }

    /// VM_RAISE_MSI: a message write of `data` to `addr`. The only doorbell this GIC
    /// has (no ITS) is GICD_SETSPI_NSR, which makes SPI `data` pending. `EINVAL` for
    /// another address or an INTID outside the SPIs.
    pub fn raise_msi(&mut self, addr: u64, data: u64) -> KResult<Kicks> {
        if addr != self.dist_base.wrapping_add(dist::GICD_SETSPI_NSR) {
            return Err(Errno::EINVAL);
        }
        let intid = u32::try_from(data & dist::SETSPI_INTID_MASK).map_err(|_| Errno::EINVAL)?;
        let s = self.spi_mut(intid).ok_or(Errno::EINVAL)?;
        s.irq.latch = true;
        self.touch();
        let mut k = Kicks::default();
        self.note(&mut k, 0, intid);
        Ok(k)
    }

    /// A trapped write of `value` to ICC_SGI1R_EL1 by vCPU `vcpu` (a group 1 request,
    /// which with DS = 1 pends SGIs of either group; see `sysreg_write`).
    pub fn sgi1r_write(&mut self, vcpu: usize, value: u64) -> Kicks {
        self.sgi_write(vcpu, value, true)
    }

    /// A trapped write to ICC_SGI0R_EL1: group 0 SGIs only.
    pub fn sgi0r_write(&mut self, vcpu: usize, value: u64) -> Kicks {
        self.sgi_write(vcpu, value, false)
    }

    /// A trapped write to one of the SGI generation registers (EC 0x18 with
    /// HCR_EL2.IMO/FMO set): ICC_SGI1R_EL1 generates SGIs of either group, ICC_SGI0R_EL1
    /// and ICC_ASGI1R_EL1 (with one security state, an alias of SGI0R) group 0 ones, as
    /// KVM. `None` for another register (not the vGIC's). Reads of these write-only
    /// registers are UNDEFINED on hardware; the caller decides (KVM answers zero).
    pub fn sysreg_write(&mut self, vcpu: usize, reg: SysReg, value: u64) -> Option<Kicks> {
        if reg == sysreg::ICC_SGI1R_EL1 {
            Some(self.sgi_write(vcpu, value, true))
        } else if reg == sysreg::ICC_SGI0R_EL1 || reg == sysreg::ICC_ASGI1R_EL1 {
            Some(self.sgi_write(vcpu, value, false))
        } else {
            None
        }
    }

    /// ICC_SGI{0,1}R_EL1: TargetList [15:0], Aff1 [23:16], INTID [27:24], Aff2
    /// [39:32], IRM [40], RS [47:44], Aff3 [55:48]. IRM = 1 targets every PE but the
    /// sender; otherwise the PEs with affinity Aff3.Aff2.Aff1.(RS * 16 + n) for each
    /// TargetList bit n. With GICD_CTLR.DS = 1 a group 1 request (SGI1R) pends the SGI
    /// whatever group the target gave it, a group 0 request only a group 0 SGI (KVM's
    /// vgic_v3_dispatch_sgi).
    fn sgi_write(&mut self, vcpu: usize, value: u64, group1: bool) -> Kicks {
        let mut kicks = Kicks::default();
        if vcpu >= self.cpus.len() {
            return kicks;
        }
        // Only the targets' SGIs change, each marked by `private_mut`: no epoch.
        let intid = ((value >> 24) & 0xf) as u32;
        let irm = value & (1 << 40) != 0;
        let target_list = value & 0xffff;
        let rs = (value >> 44) & 0xf;
        // The upper affinity levels the targets must share, in MPIDR layout.
        let upper = (((value >> 48) & 0xff) << 32)
            | (((value >> 32) & 0xff) << 16)
            | (value & 0xff_0000) >> 8;
        let grp0_on = self.ctlr & 1 != 0;
        let grp1_on = self.ctlr & 2 != 0;
        for (t, c) in self.cpus.iter_mut().enumerate() {
            let hit = if irm {
                t != vcpu
            } else {
                let aff0 = c.mpidr & 0xff;
                let same_upper = c.mpidr & (AFF_MASK & !0xff) == upper;
                // RS selects the block of 16 Aff0 values TargetList covers.
                same_upper && (aff0 >> 4) == rs && (target_list >> (aff0 & 0xf)) & 1 != 0
            };
            if !hit {
                continue;
            }
            let Some(irq) = c.private_mut(intid as usize) else {
                continue;
            };
            if irq.group1 && !group1 {
                continue;
            }
            irq.latch = true;
            if irq.deliverable(grp0_on, grp1_on) {
                kicks.add(t);
            }
        }
        kicks
    }

    /// True when vCPU `vcpu` has an interrupt it would take now: pending, enabled, its
    /// group enabled in GICD_CTLR and in the guest's ICH_VMCR_EL2 (VENG0/VENG1), and of
    /// higher priority than the guest's priority mask (VPMR). WFI sleeps while false.
    /// The VMCR is the one `sync` saw last.
    pub fn has_pending(&self, vcpu: usize) -> bool {
        let Some(c) = self.cpus.get(vcpu) else {
            return false;
        };
        let pmr = ((c.vmcr >> 24) & 0xff) as u8;
        let grp0_on = self.ctlr & 1 != 0 && c.vmcr & 1 != 0;
        let grp1_on = self.ctlr & 2 != 0 && c.vmcr & 2 != 0;
        let wants = |i: &Irq| i.deliverable(grp0_on, grp1_on) && i.priority < pmr;
        let v = u8::try_from(vcpu).unwrap_or(NO_OWNER);
        // Unmarked interrupts are idle: only the marked ones can be pending.
        c.marked_private().any(|(_, i)| wants(i))
            || self.marked_spis().any(|(_, s)| {
                let mine = if s.irq.owner == NO_OWNER {
                    s.target == v
                } else {
                    s.irq.owner == v
                };
                mine && wants(&s.irq)
            })
    }

    // --- Internals -------------------------------------------------------------------

    /// Records a state change (see `epoch`).
    fn touch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    fn spi_index(intid: u32) -> Option<usize> {
        let i = intid.checked_sub(SPI_BASE)?;
        if i < NR_SPIS {
            usize::try_from(i).ok()
        } else {
            None
        }
    }

    /// The SPIs marked as possibly live: (INTID, SPI), lowest first.
    pub(crate) fn marked_spis(&self) -> impl Iterator<Item = (u32, &Spi)> {
        marked(self.spi_maybe_live).filter_map(|n| {
            let s = self.spis.get(usize::try_from(n).ok()?)?;
            Some((SPI_BASE.wrapping_add(n), s))
        })
    }

    /// SPI `intid` to change: marked as possibly live for `flush`.
    fn spi_mut(&mut self, intid: u32) -> Option<&mut Spi> {
        let n = Self::spi_index(intid)?;
        self.spi_maybe_live |= 1u128.checked_shl(u32::try_from(n).ok()?).unwrap_or(0);
        self.spis.get_mut(n)
    }

    /// The input line of SPI `intid` (for `Vmm::spi_line`).
    #[cfg(any(test, feature = "fake-host"))]
    pub fn spi_line(&self, intid: u32) -> Option<bool> {
        Some(self.spi(intid)?.irq.level)
    }

    fn spi(&self, intid: u32) -> Option<&Spi> {
        self.spis.get(Self::spi_index(intid)?)
    }

    /// Interrupt `intid` as vCPU `vcpu` sees it (SGIs and PPIs are per vCPU).
    fn irq(&self, vcpu: usize, intid: u32) -> Option<&Irq> {
        if intid < SPI_BASE {
            self.cpus.get(vcpu)?.private.get(intid as usize)
        } else {
            self.spi(intid).map(|s| &s.irq)
        }
    }

    fn irq_mut(&mut self, vcpu: usize, intid: u32) -> Option<&mut Irq> {
        if intid < SPI_BASE {
            self.cpus.get_mut(vcpu)?.private_mut(intid as usize)
        } else {
            self.spi_mut(intid).map(|s| &mut s.irq)
        }
    }

    /// The vCPU that would take interrupt `intid` now.
    fn delivery_cpu(&self, vcpu: usize, intid: u32) -> Option<usize> {
        if intid < SPI_BASE {
            return Some(vcpu);
        }
        let s = self.spi(intid)?;
        let t = if s.irq.owner != NO_OWNER {
            s.irq.owner
        } else {
            s.target
        };
        (t != NO_TARGET).then_some(usize::from(t))
    }

    /// Adds the vCPU that must look at `intid` to `k` if the interrupt is deliverable.
    fn note(&self, k: &mut Kicks, vcpu: usize, intid: u32) {
        let grp0_on = self.ctlr & 1 != 0;
        let grp1_on = self.ctlr & 2 != 0;
        if let Some(irq) = self.irq(vcpu, intid) {
            if irq.deliverable(grp0_on, grp1_on) {
                if let Some(t) = self.delivery_cpu(vcpu, intid) {
                    k.add(t);
                }
            }
        }
    }

    /// The vCPU a GICD_IROUTER value names: with IRM = 1 ("any participating PE") the
    /// first vCPU whose redistributor is awake (GICR_WAKER), else vCPU 0; with IRM = 0
    /// the vCPU whose MPIDR affinity equals the route's, or none.
    fn resolve_route(&self, route: u64) -> u8 {
        let found = if route & IROUTER_IRM != 0 {
            self.cpus.iter().position(|c| !c.asleep).or(Some(0))
        } else {
            self.cpus
                .iter()
                .position(|c| (c.mpidr ^ route) & AFF_MASK == 0)
        };
        found
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(NO_TARGET)
    }

    /// Re-resolves the IRM = 1 routes (after a redistributor woke or slept).
    fn reroute_any(&mut self) {
        let t = self.resolve_route(IROUTER_IRM);
        for s in self.spis.iter_mut().filter(|s| s.route & IROUTER_IRM != 0) {
            s.target = t;
        }
    }
}
