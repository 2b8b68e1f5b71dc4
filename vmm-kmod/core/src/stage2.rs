//! Stage-2 translation tables: 4 KiB granule, 2 MiB blocks where both addresses are
//! aligned, the root made of one or more concatenated tables (see [`S2Geometry`]).
//!
//! Tables are host pages reached through [`Host::pa_to_va`], so the same code walks real
//! memory in the kernel and a fake physical memory in the unit tests. Entries are
//! written with volatile stores because the hardware walker reads them concurrently.
//!
//! Break-before-make: a valid entry is never overwritten with another valid one; it is
//! cleared, the TLBs are invalidated for the range it covered (through the EL2 code,
//! `HYP_S2_TLBI_RANGE`), and only then is the new entry written or the table it
//! pointed to freed.

use crate::el2::S2Geometry;
use crate::errno::{Errno, KResult};
use crate::host::{Host, PhysMem, PAGE_SIZE};
use alloc::vec::Vec;
use vmm_sys::arm64::regs::s2;
use vmm_sys::hyp;

/// Entries per table page.
const ENTRIES: usize = 512;
/// The size a level-2 block maps.
pub const BLOCK_2M: u64 = 2 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

/// What a mapping allows the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// A leaf found by [`Stage2::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// The output address of the IPA looked up (not just of the block).
    pub pa: u64,
    /// The raw descriptor.
    pub desc: u64,
    /// 2 for a 2 MiB block, 3 for a page (1 for a 1 GiB block, which we never build).
    pub level: u32,
}

impl Leaf {
    pub fn perm(&self) -> Perm {
        Perm {
            read: self.desc & s2::S2AP_R != 0,
            write: self.desc & s2::S2AP_W != 0,
            exec: self.desc & s2::XN == 0,
        }
    }
}

/// The leaf descriptor bits for normal RAM with `perm` (without the output address and
/// the block/page bit): Normal write-back memory, inner shareable, access flag set so
/// the first access does not fault.
pub fn ram_attrs(perm: Perm) -> u64 {
    let mut d = s2::VALID | s2::MEMATTR_NORMAL_WB | s2::SH_IS | s2::AF;
    if perm.read {
        d |= s2::S2AP_R;
    }
    if perm.write {
        d |= s2::S2AP_W;
    }
    if !perm.exec {
        d |= s2::XN;
    }
    d
}

/// log2 of the span of one entry at `level` (0..=3).
const fn level_shift(level: u32) -> u32 {
    // level is 0..=3 everywhere this is called (walks stop at 3).
    #[allow(clippy::arithmetic_side_effects)]
    let s = 12 + 9 * (3 - level);
    s
}

pub struct Stage2 {
    geom: S2Geometry,
    root: PhysMem,
    /// VTTBR_EL2 for this VM: root address | VMID << 48.
    vttbr: u64,
    /// Non-root table pages, sorted by physical address (freed through the record the
    /// host gave us, not a reconstruction: a host's allocation VA may differ from its
    /// direct-map VA).
    tables: Vec<PhysMem>,
}

impl Stage2 {
    /// Empty tables for a VM with `vmid`.
    pub fn new<H: Host>(host: &H, geom: S2Geometry, vmid: u16) -> KResult<Stage2> {
        let len = geom
            .root_pages
            .checked_mul(PAGE_SIZE)
            .ok_or(Errno::EINVAL)?;
        // Concatenated root tables must be aligned to their total size. The tables are
        // read by the stage-2 walker by physical address only; EL2 code never touches
        // them, so they are not mapped for EL2.
        let root = host.alloc_contig(len, len)?;
        Ok(Stage2 {
            geom,
            root,
            vttbr: (root.pa & s2::OA_MASK)
                | (u64::from(vmid) << vmm_sys::arm64::regs::VTTBR_VMID_SHIFT),
            tables: Vec::new(),
        })
    }

    pub fn vttbr(&self) -> u64 {
        self.vttbr
    }

    pub fn geometry(&self) -> S2Geometry {
        self.geom
    }

    /// Non-root table pages in use (for tests and statistics).
    pub fn table_pages(&self) -> usize {
        self.tables.len()
    }

    fn root_entries(&self) -> usize {
        // start_level is 0 or 1 and ipa_bits at most 48, so the shift is below 64 and the
        // count at most 16 * 512.
        let span_bits = level_shift(self.geom.start_level);
        let n = 1u64 << self.geom.ipa_bits.saturating_sub(span_bits);
        usize::try_from(n).unwrap_or(ENTRIES).max(1)
    }

    fn table_ptr<H: Host>(host: &H, table_pa: u64) -> KResult<*mut u64> {
        host.pa_to_va(table_pa)
            .map(|p| p.as_ptr().cast::<u64>())
            .ok_or(Errno::EFAULT)
    }

    fn read<H: Host>(host: &H, table_pa: u64, idx: usize) -> KResult<u64> {
        let p = Self::table_ptr(host, table_pa)?;
        // SAFETY: table_pa is a table page (or the concatenated root) this object
        // allocated, so the host maps it; callers keep idx below the table's entry count
        // (ENTRIES, or root_entries for the root, which spans root_pages pages).
        Ok(unsafe { p.add(idx).read_volatile() })
    }

    fn write<H: Host>(host: &H, table_pa: u64, idx: usize, v: u64) -> KResult<()> {
        let p = Self::table_ptr(host, table_pa)?;
        // SAFETY: as in `read`; the table belongs to this object, and `&mut self` on every
        // caller serialises writers.
        unsafe { p.add(idx).write_volatile(v) };
        Ok(())
    }

    fn tlbi<H: Host>(&self, host: &H, start: u64, end: u64, last_level_only: bool) {
        crate::barrier::tables_written();
        let args = [self.vttbr, start, end, u64::from(last_level_only), 0, 0, 0];
        // SAFETY: HYP_S2_TLBI_RANGE only invalidates TLB entries of this VMID for the
        // given IPA range; it reads no memory, so no argument can make EL2 misbehave.
        unsafe { host.hyp_call(hyp::HYP_S2_TLBI_RANGE, &args) };
    }

    /// Invalidates every TLB entry of this VM's VMID (before the VMID is reused).
    pub fn tlbi_all<H: Host>(&self, host: &H) {
        let args = [self.vttbr, 0, 0, 0, 0, 0, 0];
        // SAFETY: HYP_S2_TLBI_ALL invalidates by VMID and reads no memory.
        unsafe { host.hyp_call(hyp::HYP_S2_TLBI_ALL, &args) };
    }

    /// Index of `ipa` in a table at `level` (the root may be wider than one page).
    fn index(&self, ipa: u64, level: u32) -> usize {
        let i = ipa >> level_shift(level);
        let mask = if level == self.geom.start_level {
            self.root_entries()
        } else {
            ENTRIES
        };
        // mask is a power of two (root entries are 2^k), so this keeps i in range.
        #[allow(clippy::arithmetic_side_effects)]
        let m = (mask as u64) - 1;
        usize::try_from(i & m).unwrap_or(0)
    }

    /// Maps `[ipa, ipa + len)` to the physically contiguous `[pa, pa + len)` with `perm`.
    /// Uses 2 MiB blocks wherever both addresses are 2 MiB aligned and the rest of the
    /// range covers the block. The range must not be mapped already (the memory-map
    /// bookkeeping guarantees it); an entry found valid is replaced break-before-make.
    /// On failure part of the range may be mapped: the caller unmaps it.
    pub fn map<H: Host>(
        &mut self,
        host: &H,
        ipa: u64,
        pa: u64,
        len: u64,
        perm: Perm,
    ) -> KResult<()> {
        if !(ipa | pa | len).is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let end = ipa.checked_add(len).ok_or(Errno::EINVAL)?;
        if end > self.geom.ipa_limit() || pa.checked_add(len).is_none() {
            return Err(Errno::EINVAL);
        }
        let attrs = ram_attrs(perm);
        let (mut ipa, mut pa) = (ipa, pa);
        while ipa < end {
            // end > ipa in the loop, so the subtraction cannot underflow.
            #[allow(clippy::arithmetic_side_effects)]
            let left = end - ipa;
            let step = if ipa % BLOCK_2M == 0 && pa % BLOCK_2M == 0 && left >= BLOCK_2M {
                self.set_leaf(host, ipa, 2, (pa & s2::OA_MASK) | attrs)?;
                BLOCK_2M
            } else {
                self.set_leaf(host, ipa, 3, (pa & s2::OA_MASK) | attrs | s2::TABLE_OR_PAGE)?;
                PAGE
            };
            // ipa + step <= end (checked above) and pa + len did not overflow.
            #[allow(clippy::arithmetic_side_effects)]
            {
                ipa += step;
                pa += step;
            }
        }
        // New entries need no TLBI, but the walker must see them before the guest runs.
        crate::barrier::tables_written();
        Ok(())
    }

    /// Writes leaf `desc` for `ipa` at `level`, creating the tables on the way.
    fn set_leaf<H: Host>(&mut self, host: &H, ipa: u64, level: u32, desc: u64) -> KResult<()> {
        let mut table = self.root.pa;
        let mut lvl = self.geom.start_level;
        while lvl < level {
            let idx = self.index(ipa, lvl);
            let e = Self::read(host, table, idx)?;
            if e & s2::VALID == 0 {
                self.tables.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                let page = host.alloc_contig(PAGE_SIZE, PAGE_SIZE)?;
                let at = self.tables.partition_point(|t| t.pa < page.pa);
                self.tables.insert(at, page);
                crate::barrier::before_link();
                Self::write(
                    host,
                    table,
                    idx,
                    (page.pa & s2::OA_MASK) | s2::VALID | s2::TABLE_OR_PAGE,
                )?;
                table = page.pa;
            } else if e & s2::TABLE_OR_PAGE != 0 {
                table = e & s2::OA_MASK;
            } else {
                // A block already covers this address: the caller asked to map over an
                // existing mapping, which the memory-map checks exclude.
                return Err(Errno::EEXIST);
            }
            lvl = lvl.saturating_add(1);
        }
        let idx = self.index(ipa, level);
        let old = Self::read(host, table, idx)?;
        if old & s2::VALID != 0 {
            if old & s2::TABLE_OR_PAGE != 0 && level < 3 {
                // A table where a block should go: pages are mapped inside; refuse.
                return Err(Errno::EEXIST);
            }
            Self::write(host, table, idx, 0)?;
            let span = 1u64 << level_shift(level);
            let base = ipa & !(span.wrapping_sub(1));
            self.tlbi(host, base, base.saturating_add(span), true);
        }
        Self::write(host, table, idx, desc)
    }

    /// The leaf that maps `ipa`, if any.
    pub fn translate<H: Host>(&self, host: &H, ipa: u64) -> Option<Leaf> {
        if ipa >= self.geom.ipa_limit() {
            return None;
        }
        let mut table = self.root.pa;
        let mut lvl = self.geom.start_level;
        loop {
            let e = Self::read(host, table, self.index(ipa, lvl)).ok()?;
            if e & s2::VALID == 0 {
                return None;
            }
            if lvl == 3 || e & s2::TABLE_OR_PAGE == 0 {
                if lvl == 3 && e & s2::TABLE_OR_PAGE == 0 {
                    return None; // reserved encoding at level 3
                }
                let span = 1u64 << level_shift(lvl);
                let off = ipa & span.wrapping_sub(1);
                return Some(Leaf {
                    pa: (e & s2::OA_MASK & !span.wrapping_sub(1)) | off,
                    desc: e,
                    level: lvl,
                });
            }
            table = e & s2::OA_MASK;
            lvl = lvl.saturating_add(1);
        }
    }

    /// Unmaps `[ipa, ipa + len)`: clears the leaves, invalidates the TLBs, and frees every
    /// table page left empty (clearing its parent entry and invalidating the walk caches
    /// first). Holes are fine. A block only partly inside the range is left alone (the
    /// memory maps never produce one: blocks lie wholly inside one mapping, and unmapping
    /// is by whole mapping).
    pub fn unmap<H: Host>(&mut self, host: &H, ipa: u64, len: u64) {
        let Some(end) = ipa.checked_add(len) else {
            return;
        };
        let end = end.min(self.geom.ipa_limit());
        if ipa >= end {
            return;
        }
        let entries = self.root_entries();
        self.unmap_table(
            host,
            self.root.pa,
            self.geom.start_level,
            0,
            entries,
            ipa,
            end,
        );
        self.tlbi(host, ipa, end, true);
    }

    /// Clears `[start, end)` in the table at `table_pa` (level `lvl`, covering IPAs from
    /// `base`, `n` entries). Returns true when the table is left empty.
    #[allow(clippy::too_many_arguments)]
    fn unmap_table<H: Host>(
        &mut self,
        host: &H,
        table_pa: u64,
        lvl: u32,
        base: u64,
        n: usize,
        start: u64,
        end: u64,
    ) -> bool {
        let span = 1u64 << level_shift(lvl);
        let mut empty = true;
        for idx in 0..n {
            // idx < n <= 16 * 512 and base + n * span <= the IPA limit: no overflow.
            #[allow(clippy::arithmetic_side_effects)]
            let e_start = base + (idx as u64) * span;
            let e_end = e_start.saturating_add(span);
            let Ok(e) = Self::read(host, table_pa, idx) else {
                return false;
            };
            if e & s2::VALID == 0 {
                continue;
            }
            if e_end <= start || e_start >= end {
                empty = false;
                continue;
            }
            let is_table = lvl < 3 && e & s2::TABLE_OR_PAGE != 0;
            if !is_table {
                if e_start >= start && e_end <= end {
                    let _ = Self::write(host, table_pa, idx, 0);
                } else {
                    empty = false;
                }
                continue;
            }
            let child = e & s2::OA_MASK;
            if self.unmap_table(
                host,
                child,
                lvl.saturating_add(1),
                e_start,
                ENTRIES,
                start,
                end,
            ) {
                // Break before freeing: unlink, invalidate leaves and walk caches for the
                // span, then give the page back.
                let _ = Self::write(host, table_pa, idx, 0);
                self.tlbi(host, e_start, e_end, false);
                self.free_table(host, child);
            } else {
                empty = false;
            }
        }
        empty
    }

    fn free_table<H: Host>(&mut self, host: &H, pa: u64) {
        if let Ok(at) = self.tables.binary_search_by(|t| t.pa.cmp(&pa)) {
            let page = self.tables.remove(at);
            host.free_contig(page);
        }
    }

    /// Frees every table (after [`Stage2::tlbi_all`]; no vCPU may run).
    pub fn destroy<H: Host>(mut self, host: &H) {
        let entries = self.root_entries();
        self.unmap_table(
            host,
            self.root.pa,
            self.geom.start_level,
            0,
            entries,
            0,
            self.geom.ipa_limit(),
        );
        // Whatever unmap_table could not reach (a table the host cannot translate)
        // is still returned.
        for page in self.tables.drain(..) {
            host.free_contig(page);
        }
        host.free_contig(self.root);
    }
}
