//! The EL2 translation tables vmm.ko builds for its EL2 code (the `el2_ttbr0` of
//! [`crate::InitParams`]): identity mapped (VA == PA), 4 KiB granule, four levels from
//! level 0 (the core's TCR_EL2 uses T0SZ = 16, 48-bit EL2 addresses), as FreeBSD's
//! vmm builds its `vmmpmap` (sys/arm64/vmm/vmm_mmu.c) for the same purpose.
//!
//! What gets mapped (docs/el2.md): the blob read-only + executable, and every range
//! the core hands to `Host::map_el2` (EL2 stacks, VM and vCPU contexts) read-write,
//! never executable (SCTLR_EL2.WXN is set). The memory attribute index is the one of
//! normal write-back memory in the host's MAIR, because the EL2 init code copies
//! MAIR_EL1 into MAIR_EL2: on FreeBSD/arm64 that is `VM_MEMATTR_WRITE_BACK` (2).
//!
//! The table pages come from a [`TableMem`], so the same code runs against kernel
//! memory in vmm.ko and against a fake physical memory in the unit tests.

use crate::errno::{Errno, KResult};
use alloc::vec::Vec;

/// Page or table descriptor type bits (valid, "page"/"table").
const DESC_VALID_TABLE: u64 = 0b11;
/// Output-address bits of a descriptor (48-bit PA, 4 KiB granule).
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
/// Access flag: set, so the first access does not fault (no hardware AF management).
pub const ATTR_AF: u64 = 1 << 10;
/// Inner shareable.
pub const ATTR_SH_IS: u64 = 3 << 8;
/// AP[2]: read-only.
pub const ATTR_AP_RO: u64 = 1 << 7;
/// AP[1]: RES1 in the EL2 (single privilege level) regime.
pub const ATTR_AP1_RES1: u64 = 1 << 6;
/// XN (bit 54) of the EL2 regime.
pub const ATTR_XN: u64 = 1 << 54;
/// `AttrIndx` field for MAIR index `i`.
pub const fn attr_idx(i: u64) -> u64 {
    (i & 7) << 2
}

/// Leaf attributes for the blob: normal memory at MAIR index `mair_wb`, read-only,
/// executable.
pub const fn attrs_code(mair_wb: u64) -> u64 {
    ATTR_AF | ATTR_SH_IS | ATTR_AP1_RES1 | ATTR_AP_RO | attr_idx(mair_wb)
}

/// Leaf attributes for data the EL2 code reads and writes: never executable.
pub const fn attrs_data(mair_wb: u64) -> u64 {
    ATTR_AF | ATTR_SH_IS | ATTR_AP1_RES1 | ATTR_XN | attr_idx(mair_wb)
}

const PAGE: u64 = crate::host::PAGE_SIZE as u64;
/// Shifts of the table levels 0..=2 (level 3 holds the pages).
const TABLE_SHIFTS: [u32; 3] = [39, 30, 21];

/// Where the table pages come from.
pub trait TableMem {
    /// A zeroed, page-aligned page for a table: its physical address and a cookie the
    /// allocator needs to free it (FreeBSD: the kmem virtual address).
    fn alloc_table(&self) -> Option<(u64, usize)>;
    /// Gives back a page from [`TableMem::alloc_table`].
    fn free_table(&self, pa: u64, cookie: usize);
    /// A pointer to the 512 descriptors of the table at `pa` (a page this `TableMem`
    /// handed out).
    fn table_ptr(&self, pa: u64) -> Option<*mut u64>;
    /// Makes descriptor writes visible to the table walker (`dsb ishst` on arm64).
    fn publish(&self) {}
}

/// Index of `va` in the table at shift `shift`.
fn index(va: u64, shift: u32) -> usize {
    // The mask keeps the value below 512, which fits any usize.
    (va.checked_shr(shift).unwrap_or(0) & 0x1ff) as usize
}

/// A pointer to descriptor `idx` (< 512) of the table at `table`.
fn slot<M: TableMem>(mem: &M, table: u64, idx: usize) -> KResult<*mut u64> {
    if idx >= 512 {
        return Err(Errno::EINVAL);
    }
    let base = mem.table_ptr(table).ok_or(Errno::EFAULT)?;
    // SAFETY: `base` points at a 4 KiB table of 512 descriptors; idx < 512.
    Ok(unsafe { base.add(idx) })
}

/// An identity-mapped EL2 address space.
#[derive(Debug)]
pub struct El2Tables {
    root: u64,
    /// Every table page (physical address, allocator cookie), the root first, so that
    /// [`El2Tables::free`] returns them all.
    pages: Vec<(u64, usize)>,
}

impl El2Tables {
    /// An empty address space (just the level-0 table).
    pub fn new<M: TableMem>(mem: &M) -> KResult<El2Tables> {
        let mut pages = Vec::new();
        pages.try_reserve(16).map_err(|_| Errno::ENOMEM)?;
        let (root, cookie) = mem.alloc_table().ok_or(Errno::ENOMEM)?;
        pages.push((root, cookie));
        Ok(El2Tables { root, pages })
    }

    /// TTBR0_EL2: the physical address of the level-0 table.
    pub fn ttbr0(&self) -> u64 {
        self.root
    }

    /// Number of table pages in use (tests, diagnostics).
    pub fn table_pages(&self) -> usize {
        self.pages.len()
    }

    /// The level-3 table covering `va`, creating the missing levels if `create`.
    fn leaf_table<M: TableMem>(&mut self, mem: &M, va: u64, create: bool) -> KResult<Option<u64>> {
        let mut table = self.root;
        for shift in TABLE_SHIFTS {
            let e = slot(mem, table, index(va, shift))?;
            // SAFETY: `e` is a descriptor of a table page we own.
            let cur = unsafe { e.read_volatile() };
            table = if cur & DESC_VALID_TABLE == DESC_VALID_TABLE {
                cur & OA_MASK
            } else if create {
                self.pages.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                let (t, cookie) = mem.alloc_table().ok_or(Errno::ENOMEM)?;
                self.pages.push((t, cookie));
                // SAFETY: as above; the new table is zeroed (all entries invalid).
                unsafe { e.write_volatile((t & OA_MASK) | DESC_VALID_TABLE) };
                t
            } else {
                return Ok(None);
            };
        }
        Ok(Some(table))
    }

    /// Maps `[pa, pa + len)` at the same EL2 address with leaf attributes `attrs`
    /// (page-granular: the range is widened to whole pages). `EINVAL` for a range
    /// outside the 48-bit EL2 space; on `ENOMEM` the pages mapped so far stay mapped
    /// (the caller unmaps the whole range).
    pub fn map_identity<M: TableMem>(
        &mut self,
        mem: &M,
        pa: u64,
        len: usize,
        attrs: u64,
    ) -> KResult<()> {
        let (start, end) = page_range(pa, len)?;
        let mut p = start;
        while p < end {
            let t = self.leaf_table(mem, p, true)?.ok_or(Errno::ENOMEM)?;
            let e = slot(mem, t, index(p, 12))?;
            // SAFETY: `e` is a descriptor of a level-3 table we own.
            unsafe { e.write_volatile((p & OA_MASK) | (attrs & !OA_MASK) | DESC_VALID_TABLE) };
            p = p.checked_add(PAGE).ok_or(Errno::EINVAL)?;
        }
        mem.publish();
        Ok(())
    }

    /// Removes the leaves of `[pa, pa + len)` (the caller invalidates the EL2 TLB).
    /// Intermediate tables stay until [`El2Tables::free`].
    pub fn unmap_identity<M: TableMem>(&mut self, mem: &M, pa: u64, len: usize) {
        let Ok((start, end)) = page_range(pa, len) else {
            return;
        };
        let mut p = start;
        while p < end {
            if let Ok(Some(t)) = self.leaf_table(mem, p, false) {
                if let Ok(e) = slot(mem, t, index(p, 12)) {
                    // SAFETY: `e` is a descriptor of a level-3 table we own.
                    unsafe { e.write_volatile(0) };
                }
            }
            let Some(n) = p.checked_add(PAGE) else { break };
            p = n;
        }
        mem.publish();
    }

    /// The leaf descriptor for `va`, if mapped (tests, diagnostics).
    pub fn lookup<M: TableMem>(&mut self, mem: &M, va: u64) -> Option<u64> {
        let t = self.leaf_table(mem, va, false).ok()??;
        let e = slot(mem, t, index(va, 12)).ok()?;
        // SAFETY: `e` is a descriptor of a level-3 table we own.
        let d = unsafe { e.read_volatile() };
        (d & DESC_VALID_TABLE == DESC_VALID_TABLE).then_some(d)
    }

    /// Frees every table page. The tables must no longer be in use by any CPU.
    pub fn free<M: TableMem>(self, mem: &M) {
        for (p, cookie) in self.pages {
            mem.free_table(p, cookie);
        }
    }
}

/// `[pa, pa + len)` widened to whole pages, inside the 48-bit space.
fn page_range(pa: u64, len: usize) -> KResult<(u64, u64)> {
    let len = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
    let end = pa.checked_add(len).ok_or(Errno::EINVAL)?;
    let start = pa & !(PAGE - 1);
    let end = end.checked_add(PAGE - 1).ok_or(Errno::EINVAL)? & !(PAGE - 1);
    if end > (1u64 << 48) {
        return Err(Errno::EINVAL);
    }
    Ok((start, end))
}

#[cfg(test)]
// Test code: a panic here is a failed test.
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Fake physical memory: table pages at made-up, page-aligned addresses.
    #[derive(Default)]
    struct FakeMem {
        pages: RefCell<BTreeMap<u64, Box<[u64; 512]>>>,
        next: RefCell<u64>,
        limit: Option<usize>,
        freed: RefCell<Vec<u64>>,
    }

    impl TableMem for FakeMem {
        fn alloc_table(&self) -> Option<(u64, usize)> {
            if self.limit.is_some_and(|l| self.pages.borrow().len() >= l) {
                return None;
            }
            let mut n = self.next.borrow_mut();
            *n += 1;
            let pa = 0x4000_0000 + *n * PAGE;
            self.pages.borrow_mut().insert(pa, Box::new([0; 512]));
            Some((pa, pa as usize ^ 0x5a))
        }
        fn free_table(&self, pa: u64, cookie: usize) {
            assert_eq!(cookie, pa as usize ^ 0x5a, "cookie handed back");
            assert!(self.pages.borrow_mut().remove(&pa).is_some(), "double free");
            self.freed.borrow_mut().push(pa);
        }
        fn table_ptr(&self, pa: u64) -> Option<*mut u64> {
            self.pages.borrow_mut().get_mut(&pa).map(|b| b.as_mut_ptr())
        }
    }

    #[test]
    fn maps_identity_with_the_given_attributes() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        let pa = 0x8_1234_5000u64;
        t.map_identity(&mem, pa, 3 * 4096, attrs_code(2)).unwrap();
        for i in 0..3 {
            let d = t.lookup(&mem, pa + i * 4096).unwrap();
            assert_eq!(d & OA_MASK, pa + i * 4096, "identity");
            assert_eq!(d & 0b11, 0b11, "page descriptor");
            assert_eq!(d & ATTR_XN, 0, "code is executable");
            assert_ne!(d & ATTR_AP_RO, 0, "code is read-only");
            assert_eq!((d >> 2) & 7, 2, "write-back index of FreeBSD's MAIR");
            assert_ne!(d & ATTR_AF, 0);
        }
        assert!(t.lookup(&mem, pa + 3 * 4096).is_none());
        assert!(t.lookup(&mem, pa - 4096).is_none());
        // Root + one table per level below it.
        assert_eq!(t.table_pages(), 4);
    }

    #[test]
    fn data_is_writable_and_never_executable() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        t.map_identity(&mem, 0x10_0000, 1, attrs_data(2)).unwrap();
        let d = t.lookup(&mem, 0x10_0000).unwrap();
        assert_ne!(d & ATTR_XN, 0);
        assert_eq!(d & ATTR_AP_RO, 0);
    }

    #[test]
    fn unaligned_ranges_cover_whole_pages() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        // 2 bytes straddling a page boundary map both pages.
        t.map_identity(&mem, 0x20_0fff, 2, attrs_data(2)).unwrap();
        assert!(t.lookup(&mem, 0x20_0000).is_some());
        assert!(t.lookup(&mem, 0x20_1000).is_some());
        assert!(t.lookup(&mem, 0x20_2000).is_none());
    }

    #[test]
    fn unmap_removes_only_the_range() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        t.map_identity(&mem, 0x30_0000, 4 * 4096, attrs_data(2))
            .unwrap();
        t.unmap_identity(&mem, 0x30_1000, 2 * 4096);
        assert!(t.lookup(&mem, 0x30_0000).is_some());
        assert!(t.lookup(&mem, 0x30_1000).is_none());
        assert!(t.lookup(&mem, 0x30_2000).is_none());
        assert!(t.lookup(&mem, 0x30_3000).is_some());
    }

    #[test]
    fn refuses_addresses_beyond_48_bits_and_overflow() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        assert_eq!(
            t.map_identity(&mem, 1 << 48, 4096, attrs_data(2)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.map_identity(&mem, u64::MAX - 10, 4096, attrs_data(2)),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn out_of_memory_is_an_error_and_free_returns_every_page() {
        let mem = FakeMem {
            limit: Some(2),
            ..FakeMem::default()
        };
        let mut t = El2Tables::new(&mem).unwrap();
        assert_eq!(
            t.map_identity(&mem, 0x40_0000, 4096, attrs_data(2)),
            Err(Errno::ENOMEM)
        );
        let n = t.table_pages();
        t.free(&mem);
        assert_eq!(mem.freed.borrow().len(), n);
        assert!(mem.pages.borrow().is_empty());
    }

    #[test]
    fn distant_ranges_get_their_own_tables() {
        let mem = FakeMem::default();
        let mut t = El2Tables::new(&mem).unwrap();
        t.map_identity(&mem, 0x1000, 4096, attrs_data(2)).unwrap();
        t.map_identity(&mem, 0x80_0000_0000, 4096, attrs_data(2))
            .unwrap();
        assert_eq!(t.table_pages(), 7);
        assert_eq!(
            t.lookup(&mem, 0x80_0000_0000).unwrap() & OA_MASK,
            0x80_0000_0000
        );
        assert_eq!(t.lookup(&mem, 0x1000).unwrap() & OA_MASK, 0x1000);
    }
}
