//! A 3-level, 4 KiB-granule translation table starting at level 1 (39-bit input
//! addresses), used for EL2's identity map and for the tests' stage-2 tables. Tables
//! are allocated from the page allocator and reached through the direct map.

extern crate alloc;
use crate::mm::{alloc_pages, free_pages_at, pa_to_va};
use alloc::vec::Vec;

const VALID_TABLE: u64 = 0b11;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

pub struct PageTable {
    pub root: u64,
    pages: Vec<u64>,
}

fn entry(table: u64, idx: u64) -> *mut u64 {
    (pa_to_va(table) + idx * 8) as *mut u64
}

impl PageTable {
    pub fn new() -> Option<Self> {
        let root = alloc_pages(1)?;
        Some(PageTable {
            root,
            pages: alloc::vec![root],
        })
    }

    /// Maps one 4 KiB page `va` -> `pa` with the leaf attributes `attrs` (page type bits
    /// included by this function).
    pub fn map_page(&mut self, va: u64, pa: u64, attrs: u64) -> Option<()> {
        if va >> 39 != 0 {
            return None;
        }
        let mut table = self.root;
        for shift in [30u64, 21] {
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
}

impl Drop for PageTable {
    fn drop(&mut self) {
        for &p in &self.pages {
            free_pages_at(p, 1);
        }
    }
}
