//! A 4 KiB-granule translation table, 3 levels starting at level 1 (39-bit inputs: the
//! tests' stage-2 tables) or 4 levels from level 0 (48-bit inputs: EL2's identity map
//! for the vmm core, whose TCR_EL2 uses T0SZ = 16). Tables are allocated from the page
//! allocator and reached through the direct map.

extern crate alloc;
use crate::mm::{alloc_pages, free_pages_at, pa_to_va};
use alloc::vec::Vec;

const VALID_TABLE: u64 = 0b11;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

pub struct PageTable {
    pub root: u64,
    pages: Vec<u64>,
    /// 3 (start at level 1) or 4 (start at level 0).
    levels: u32,
}

fn entry(table: u64, idx: u64) -> *mut u64 {
    (pa_to_va(table) + idx * 8) as *mut u64
}

impl PageTable {
    pub fn new() -> Option<Self> {
        Self::with_levels(3)
    }

    pub fn with_levels(levels: u32) -> Option<Self> {
        let root = alloc_pages(1)?;
        Some(PageTable {
            root,
            pages: alloc::vec![root],
            levels,
        })
    }

    fn shifts(&self) -> &'static [u64] {
        if self.levels == 4 {
            &[39, 30, 21]
        } else {
            &[30, 21]
        }
    }

    /// Maps one 4 KiB page `va` -> `pa` with the leaf attributes `attrs` (page type bits
    /// included by this function).
    pub fn map_page(&mut self, va: u64, pa: u64, attrs: u64) -> Option<()> {
        if va >> (if self.levels == 4 { 48 } else { 39 }) != 0 {
            return None;
        }
        let mut table = self.root;
        for &shift in self.shifts() {
            let e = entry(table, (va >> shift) & 0x1ff);
            // SAFETY: `e` is inside a table page this PageTable owns.
            let cur = unsafe { e.read_volatile() };
            table = if cur & 1 == 0 {
                let t = alloc_pages(1)?;
                self.pages.push(t);
                // SAFETY: as above.
                unsafe { e.write_volatile(t | VALID_TABLE) };
                t
            } else {
                cur & OA_MASK
            };
        }
        let e = entry(table, (va >> 12) & 0x1ff);
        // SAFETY: as above; the barrier makes the entry visible to the table walker.
        unsafe {
            e.write_volatile((pa & OA_MASK) | attrs | VALID_TABLE);
            core::arch::asm!("dsb ishst");
        }
        Some(())
    }

    /// Clears the leaf for `va` if it is mapped (the caller invalidates the TLB).
    pub fn unmap_page(&mut self, va: u64) {
        let mut table = self.root;
        for &shift in self.shifts() {
            // SAFETY: `table` is a table page this PageTable owns.
            let cur = unsafe { entry(table, (va >> shift) & 0x1ff).read_volatile() };
            if cur & 1 == 0 {
                return;
            }
            table = cur & OA_MASK;
        }
        // SAFETY: as above.
        unsafe {
            entry(table, (va >> 12) & 0x1ff).write_volatile(0);
            core::arch::asm!("dsb ishst");
        }
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        for &p in &self.pages {
            free_pages_at(p, 1);
        }
    }
}
