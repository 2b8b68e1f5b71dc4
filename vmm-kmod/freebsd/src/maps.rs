//! Guest memory mapped into processes, and memory whose release must wait for them.
//!
//! bhyve maps guest memory with mmap(2) of /dev/vmm/NAME. vmm.ko answers each mmap
//! from `d_mmap_single` with a scatter/gather VM object (`OBJT_SG`) over the physical
//! chunks behind the requested guest range. The object holds a reference on its
//! `struct sglist`; the glue keeps one more. When the last mapping goes away the
//! kernel destroys the object, which drops its reference: the glue then sees its own
//! as the only one left.
//!
//! The core frees guest memory when a VM is destroyed, possibly while a process (a
//! bhyve device thread that has not exited yet) still maps it. So the host's
//! `free_contig` asks this registry first: memory overlapping a live mapping is put
//! aside and freed by a later [`Registry::reap`] once no mapping covers it. Unload
//! refuses while anything is live or put aside.
//!
//! Portable: the kernel objects are a type parameter, so the logic is unit-tested.

use alloc::vec::Vec;
use vmm_core::errno::{Errno, KResult};
use vmm_core::host::{PhysMem, PAGE_SIZE};

/// One mmap: the kernel's scatter/gather list and the physical ranges it covers.
pub struct Live<S> {
    pub sg: S,
    /// `[start, end)` physical ranges.
    pub ranges: Vec<(u64, u64)>,
}

/// Live mappings and memory waiting for them to go away.
pub struct Registry<S> {
    live: Vec<Live<S>>,
    deferred: Vec<PhysMem>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            live: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

/// Offset bits of an address within its page.
const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

fn overlaps(ranges: &[(u64, u64)], pa: u64, len: usize) -> bool {
    let end = pa.saturating_add(len as u64);
    ranges.iter().any(|&(s, e)| s < end && pa < e)
}

impl<S> Registry<S> {
    /// Forgets mappings that `dead` says are gone (handing each to `release`), then
    /// frees (with `free`) the memory put aside that no live mapping covers any more.
    pub fn reap(
        &mut self,
        dead: impl Fn(&S) -> bool,
        mut release: impl FnMut(S),
        mut free: impl FnMut(PhysMem),
    ) {
        let mut i = 0;
        while i < self.live.len() {
            if self.live.get(i).is_some_and(|l| dead(&l.sg)) {
                let l = self.live.swap_remove(i);
                release(l.sg);
            } else {
                i = i.saturating_add(1);
            }
        }
        let live = &self.live;
        let mut keep = Vec::new();
        // Never fails for lack of memory: `keep` is at most as long as `deferred`,
        // reserved up front; if even that fails, everything stays put aside.
        if keep.try_reserve(self.deferred.len()).is_err() {
            return;
        }
        for m in self.deferred.drain(..) {
            if live.iter().any(|l| overlaps(&l.ranges, m.pa, m.len)) {
                keep.push(m);
            } else {
                free(m);
            }
        }
        self.deferred = keep;
    }

    /// Records a new mapping. `ENOMEM` if the list cannot grow.
    pub fn add(&mut self, live: Live<S>) -> Result<(), (Errno, Live<S>)> {
        if self.live.try_reserve(1).is_err() {
            return Err((Errno::ENOMEM, live));
        }
        self.live.push(live);
        Ok(())
    }

    /// Frees `mem` at once (with `free`) unless a live mapping covers part of it, in
    /// which case it is put aside for [`Registry::reap`]. If the list of memory put
    /// aside cannot grow, the memory is leaked rather than freed under a mapping.
    pub fn release(&mut self, mem: PhysMem, free: impl FnOnce(PhysMem)) {
        if !self
            .live
            .iter()
            .any(|l| overlaps(&l.ranges, mem.pa, mem.len))
        {
            free(mem);
        } else if self.deferred.try_reserve(1).is_ok() {
            self.deferred.push(mem);
        }
    }

    /// Whether any mapping is live or any memory is put aside (unload must wait).
    pub fn busy(&self) -> bool {
        !self.live.is_empty() || !self.deferred.is_empty()
    }
}

/// The physical chunks behind guest range `[gpa, gpa + size)`, merged where they touch,
/// from `lookup(gpa) -> (pa, contiguous bytes from there)`. `EINVAL` for an unaligned
/// or empty range, a hole, or more than `max_chunks` chunks.
pub fn collect_chunks(
    gpa: u64,
    size: u64,
    max_chunks: usize,
    lookup: impl Fn(u64) -> Option<(u64, u64)>,
) -> KResult<Vec<(u64, u64)>> {
    if size == 0 || gpa & PAGE_MASK != 0 || size & PAGE_MASK != 0 {
        return Err(Errno::EINVAL);
    }
    let end = gpa.checked_add(size).ok_or(Errno::EINVAL)?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut g = gpa;
    while g < end {
        let (pa, avail) = lookup(g).ok_or(Errno::EINVAL)?;
        // Whole pages only: the SG pager refuses anything else.
        let take = avail.min(end.saturating_sub(g)) & !PAGE_MASK;
        if take == 0 || pa & PAGE_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        match out.last_mut() {
            Some((p, l)) if p.checked_add(*l) == Some(pa) => *l = l.saturating_add(take),
            _ => {
                if out.len() >= max_chunks {
                    return Err(Errno::EINVAL);
                }
                out.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                out.push((pa, take));
            }
        }
        g = g.checked_add(take).ok_or(Errno::EINVAL)?;
    }
    Ok(out)
}

#[cfg(test)]
// Test code: a panic here is a failed test.
#[allow(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use core::ptr::NonNull;
    use std::cell::RefCell;

    fn mem(pa: u64, len: usize) -> PhysMem {
        PhysMem {
            va: NonNull::dangling(),
            pa,
            len,
        }
    }

    #[test]
    fn memory_under_a_mapping_waits_for_it() {
        let mut r: Registry<u32> = Registry::default();
        let freed = RefCell::new(Vec::new());
        r.add(Live {
            sg: 7,
            ranges: vec![(0x10_000, 0x12_000)],
        })
        .ok()
        .unwrap();
        // Overlapping the mapping by one page: put aside.
        r.release(mem(0x11_000, 0x4000), |m| freed.borrow_mut().push(m.pa));
        // Elsewhere: freed at once.
        r.release(mem(0x20_000, 0x1000), |m| freed.borrow_mut().push(m.pa));
        assert_eq!(*freed.borrow(), vec![0x20_000]);
        assert!(r.busy());
        // The mapping is still alive: nothing more is freed.
        r.reap(
            |_| false,
            |_| panic!("released a live map"),
            |m| freed.borrow_mut().push(m.pa),
        );
        assert_eq!(freed.borrow().len(), 1);
        // The mapping went away: the memory follows.
        let released = RefCell::new(Vec::new());
        r.reap(
            |&s| s == 7,
            |s| released.borrow_mut().push(s),
            |m| freed.borrow_mut().push(m.pa),
        );
        assert_eq!(*released.borrow(), vec![7]);
        assert_eq!(*freed.borrow(), vec![0x20_000, 0x11_000]);
        assert!(!r.busy());
    }

    #[test]
    fn adjacent_ranges_do_not_overlap() {
        let mut r: Registry<u32> = Registry::default();
        r.add(Live {
            sg: 1,
            ranges: vec![(0x1000, 0x2000)],
        })
        .ok()
        .unwrap();
        let freed = RefCell::new(0);
        r.release(mem(0x2000, 0x1000), |_| *freed.borrow_mut() += 1);
        r.release(mem(0x0, 0x1000), |_| *freed.borrow_mut() += 1);
        assert_eq!(*freed.borrow(), 2);
    }

    /// Guest memory: gpa 0..0x4000 at pa 0x8000.., 0x4000..0x6000 at pa 0x20000.. and
    /// contiguous with the first run, a hole at 0x6000.
    fn lookup(g: u64) -> Option<(u64, u64)> {
        match g {
            0..=0x3fff => Some((0x8000 + g, 0x4000 - g)),
            0x4000..=0x5fff => Some((0xc000 + (g - 0x4000), 0x6000 - g)),
            _ => None,
        }
    }

    #[test]
    fn chunks_are_collected_and_merged() {
        // pa 0x8000..0xc000 and 0xc000..0xe000 touch: one chunk.
        assert_eq!(
            collect_chunks(0, 0x6000, 4, lookup),
            Ok(vec![(0x8000, 0x6000)])
        );
        assert_eq!(
            collect_chunks(0x1000, 0x2000, 4, lookup),
            Ok(vec![(0x9000, 0x2000)])
        );
    }

    #[test]
    fn chunks_refuse_holes_misalignment_and_too_many_pieces() {
        assert_eq!(collect_chunks(0, 0x7000, 4, lookup), Err(Errno::EINVAL));
        assert_eq!(collect_chunks(0x800, 0x1000, 4, lookup), Err(Errno::EINVAL));
        assert_eq!(collect_chunks(0, 0x1800, 4, lookup), Err(Errno::EINVAL));
        assert_eq!(collect_chunks(0, 0, 4, lookup), Err(Errno::EINVAL));
        // Every page at a scattered address: 3 pages need 3 chunks.
        let scattered = |g: u64| Some((0x100_000 + g * 4, 0x1000));
        assert_eq!(collect_chunks(0, 0x3000, 2, scattered), Err(Errno::EINVAL));
        assert_eq!(collect_chunks(0, 0x3000, 3, scattered).unwrap().len(), 3);
        assert_eq!(
            collect_chunks(!0xfff, 0x2000, 4, lookup),
            Err(Errno::EINVAL)
        );
    }
}
