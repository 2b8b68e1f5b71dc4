//! Guest memory: segments (VM_ALLOC_MEMSEG) made of host pages, and the mappings of
//! segment ranges into guest physical space (VM_MMAP_MEMSEG), which are entered into
//! stage 2 eagerly when made, so a guest never faults on its RAM.
//!
//! Limits and errnos follow FreeBSD's `vm_alloc_memseg`/`vm_mmap_memseg`: 4 segments,
//! 8 mappings, `EINVAL` for bad alignment, ids or ranges, `EEXIST` for a segment already
//! allocated with the same shape, `ENOSPC` with no free mapping slot, `EFAULT` for a
//! mapping that overlaps another or leaves the guest physical address space (FreeBSD's
//! `vm_map_find` failure).

use crate::errno::{Errno, KResult};
use crate::host::{Host, PhysMem, PAGE_SIZE};
use crate::stage2::{Perm, Stage2, BLOCK_2M};
use alloc::vec::Vec;
use vmm_sys::abi::{PROT_ALL, PROT_EXEC, PROT_READ, PROT_WRITE, VM_MEMMAP_F_WIRED};
use vmm_sys::VM_MAX_SUFFIXLEN;

pub const VM_MAX_MEMSEGS: usize = 4;
pub const VM_MAX_MEMMAPS: usize = 8;
const PAGE: u64 = PAGE_SIZE as u64;

/// One memory segment: host memory in physically contiguous chunks.
pub struct Segment {
    pub len: u64,
    /// Guest system memory (no name) rather than named device memory.
    pub sysmem: bool,
    pub name: [u8; VM_MAX_SUFFIXLEN + 1],
    /// (offset in the segment, chunk), sorted by offset, covering `[0, len)`.
    chunks: Vec<(u64, PhysMem)>,
}

impl Segment {
    /// Allocates `len` bytes (page multiple, non-zero) of zeroed host memory, in 2 MiB
    /// aligned chunks where the host has them (so stage 2 can use blocks), else pages.
    pub fn alloc<H: Host>(
        host: &H,
        len: u64,
        name: [u8; VM_MAX_SUFFIXLEN + 1],
    ) -> KResult<Segment> {
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let mut seg = Segment {
            len,
            sysmem: name.first() == Some(&0),
            name,
            chunks: Vec::new(),
        };
        let mut off = 0u64;
        while off < len {
            // A large segment takes many chunks: its caller may give up between them.
            if off != 0 && host.alloc_interrupted() {
                seg.free(host);
                return Err(Errno::EINTR);
            }
            // off < len in the loop.
            #[allow(clippy::arithmetic_side_effects)]
            let left = len - off;
            let chunk = if left >= BLOCK_2M {
                match host.alloc_contig(BLOCK_2M as usize, BLOCK_2M as usize) {
                    Ok(c) => Ok(c),
                    Err(_) => host.alloc_contig(PAGE_SIZE, PAGE_SIZE),
                }
            } else {
                host.alloc_contig(PAGE_SIZE, PAGE_SIZE)
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    seg.free(host);
                    return Err(e);
                }
            };
            if seg.chunks.try_reserve(1).is_err() {
                host.free_contig(chunk);
                seg.free(host);
                return Err(Errno::ENOMEM);
            }
            seg.chunks.push((off, chunk));
            off = off.saturating_add(chunk.len as u64);
        }
        Ok(seg)
    }

    /// Returns every chunk to the host.
    pub fn free<H: Host>(&mut self, host: &H) {
        for (_, c) in self.chunks.drain(..) {
            host.free_contig(c);
        }
    }

    /// The chunk holding segment offset `off`: (chunk, offset inside it).
    fn chunk_at(&self, off: u64) -> Option<(&PhysMem, u64)> {
        let i = self.chunks.partition_point(|(o, _)| *o <= off);
        let (o, c) = self.chunks.get(i.checked_sub(1)?)?;
        let inside = off.checked_sub(*o)?;
        if inside < c.len as u64 {
            Some((c, inside))
        } else {
            None
        }
    }

    /// Physical address, kernel VA and the contiguous bytes left at segment offset `off`.
    pub fn phys_at(&self, off: u64) -> Option<(u64, *mut u8, u64)> {
        let (c, inside) = self.chunk_at(off)?;
        let pa = c.pa.checked_add(inside)?;
        let idx = usize::try_from(inside).ok()?;
        // SAFETY: inside < c.len, so the pointer stays within the chunk's allocation.
        let va = unsafe { c.va.as_ptr().add(idx) };
        Some((pa, va, (c.len as u64).saturating_sub(inside)))
    }

    /// The chunks overlapping `[off, off + len)`, clipped: (segment offset, pa, va, len).
    pub fn pieces(
        &self,
        off: u64,
        len: u64,
    ) -> impl Iterator<Item = (u64, u64, *mut u8, u64)> + '_ {
        let end = off.saturating_add(len);
        let mut pos = off;
        core::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let (pa, va, avail) = self.phys_at(pos)?;
            #[allow(clippy::arithmetic_side_effects)] // pos < end
            let n = avail.min(end - pos);
            let here = pos;
            pos = pos.saturating_add(n);
            Some((here, pa, va, n))
        })
    }

    /// Every chunk: (pa, va, len), for cache maintenance over the whole segment.
    pub fn chunks(&self) -> impl Iterator<Item = &PhysMem> + '_ {
        self.chunks.iter().map(|(_, c)| c)
    }

    /// Host pages in use.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, c)| c.len as u64).sum()
    }
}

/// One mapping of a segment range at a guest physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memmap {
    pub gpa: u64,
    pub segid: i32,
    pub segoff: u64,
    pub len: u64,
    pub prot: i32,
    pub flags: i32,
}

impl Memmap {
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.len)
    }
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.end()
    }
    pub fn perm(&self) -> Perm {
        Perm {
            read: self.prot & PROT_READ != 0,
            write: self.prot & PROT_WRITE != 0,
            exec: self.prot & PROT_EXEC != 0,
        }
    }
}

/// A VM's memory: segments, mappings and the stage-2 tables that realise the mappings.
pub struct VmMem {
    pub segs: [Option<Segment>; VM_MAX_MEMSEGS],
    pub maps: [Option<Memmap>; VM_MAX_MEMMAPS],
    pub s2: Stage2,
}

fn seg_index(segid: i32) -> KResult<usize> {
    usize::try_from(segid)
        .ok()
        .filter(|&i| i < VM_MAX_MEMSEGS)
        .ok_or(Errno::EINVAL)
}

impl VmMem {
    pub fn new(s2: Stage2) -> VmMem {
        VmMem {
            segs: [None, None, None, None],
            maps: [None; VM_MAX_MEMMAPS],
            s2,
        }
    }

    /// VM_ALLOC_MEMSEG. `name` is NUL-terminated (checked by the caller).
    pub fn alloc_segment<H: Host>(
        &mut self,
        host: &H,
        segid: i32,
        len: u64,
        name: [u8; VM_MAX_SUFFIXLEN + 1],
        reserve: &dyn Fn(u64) -> KResult<()>,
    ) -> KResult<()> {
        let i = seg_index(segid)?;
        if len == 0 || !len.is_multiple_of(PAGE) || len > self.s2.geometry().ipa_limit() {
            return Err(Errno::EINVAL);
        }
        let sysmem = name.first() == Some(&0);
        let slot = self.segs.get_mut(i).ok_or(Errno::EINVAL)?;
        if let Some(s) = slot {
            return Err(if s.len == len && s.sysmem == sysmem {
                Errno::EEXIST
            } else {
                Errno::EINVAL
            });
        }
        // The request is valid: count it against the host's limit, then allocate.
        reserve(len)?;
        *slot = Some(Segment::alloc(host, len, name)?);
        Ok(())
    }

    /// VM_GET_MEMSEG: (len, name); an unallocated segment reads as length 0.
    pub fn get_segment(&self, segid: i32) -> KResult<(u64, [u8; VM_MAX_SUFFIXLEN + 1])> {
        let i = seg_index(segid)?;
        Ok(match self.segs.get(i).and_then(|s| s.as_ref()) {
            Some(s) => (s.len, s.name),
            None => (0, [0; VM_MAX_SUFFIXLEN + 1]),
        })
    }

    /// VM_MMAP_MEMSEG: validates, records and enters the mapping into stage 2.
    pub fn map<H: Host>(&mut self, host: &H, m: Memmap) -> KResult<()> {
        if !m.gpa.is_multiple_of(PAGE)
            || !m.segoff.is_multiple_of(PAGE)
            || m.len == 0
            || !m.len.is_multiple_of(PAGE)
        {
            return Err(Errno::EINVAL);
        }
        if m.prot == 0 || m.prot & !PROT_ALL != 0 || m.flags & !VM_MEMMAP_F_WIRED != 0 {
            return Err(Errno::EINVAL);
        }
        let seg = self
            .segs
            .get(seg_index(m.segid)?)
            .and_then(|s| s.as_ref())
            .ok_or(Errno::EINVAL)?;
        let last = m.segoff.checked_add(m.len).ok_or(Errno::EINVAL)?;
        if last > seg.len {
            return Err(Errno::EINVAL);
        }
        let end = m.gpa.checked_add(m.len).ok_or(Errno::EFAULT)?;
        if end > self.s2.geometry().ipa_limit() {
            return Err(Errno::EFAULT);
        }
        if self
            .maps
            .iter()
            .flatten()
            .any(|o| m.gpa < o.end() && o.gpa < end)
        {
            return Err(Errno::EFAULT);
        }
        let slot = self
            .maps
            .iter()
            .position(|s| s.is_none())
            .ok_or(Errno::ENOSPC)?;
        let perm = m.perm();
        let mut failed = None;
        for (off, pa, _, n) in seg.pieces(m.segoff, m.len) {
            // off >= segoff and off - segoff < len, so gpa + that stays below `end`.
            #[allow(clippy::arithmetic_side_effects)]
            let ipa = m.gpa + (off - m.segoff);
            if let Err(e) = self.s2.map(host, ipa, pa, n, perm) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.s2.unmap(host, m.gpa, m.len);
            return Err(e);
        }
        if let Some(s) = self.maps.get_mut(slot) {
            *s = Some(m);
        }
        Ok(())
    }

    /// VM_MMAP_GETNEXT: the mapping with the lowest gpa at or above `gpa`.
    pub fn next_map(&self, gpa: u64) -> KResult<Memmap> {
        self.maps
            .iter()
            .flatten()
            .filter(|m| m.gpa >= gpa)
            .min_by_key(|m| m.gpa)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// VM_MUNMAP_MEMSEG: removes the mapping that is exactly `[gpa, gpa + len)`.
    pub fn unmap<H: Host>(&mut self, host: &H, gpa: u64, len: u64) -> KResult<()> {
        let slot = self
            .maps
            .iter_mut()
            .find(|s| matches!(s, Some(m) if m.gpa == gpa && m.len == len))
            .ok_or(Errno::EINVAL)?;
        *slot = None;
        self.s2.unmap(host, gpa, len);
        Ok(())
    }

    /// Removes the mappings of device (named) segments, as `vm_reinit` does; guest
    /// system memory stays mapped.
    pub fn unmap_devmem<H: Host>(&mut self, host: &H) {
        for i in 0..VM_MAX_MEMMAPS {
            let Some(Some(m)) = self.maps.get(i).copied() else {
                continue;
            };
            let sysmem = usize::try_from(m.segid)
                .ok()
                .and_then(|s| self.segs.get(s))
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.sysmem);
            if !sysmem {
                self.s2.unmap(host, m.gpa, m.len);
                if let Some(s) = self.maps.get_mut(i) {
                    *s = None;
                }
            }
        }
    }

    /// The mapping containing `gpa`.
    pub fn map_at(&self, gpa: u64) -> Option<&Memmap> {
        self.maps.iter().flatten().find(|m| m.contains(gpa))
    }

    /// Host physical address, kernel VA and contiguous length behind guest physical
    /// address `gpa`, if guest memory is mapped there.
    pub fn gpa_to_phys(&self, gpa: u64) -> Option<(u64, *mut u8, u64)> {
        let m = self.map_at(gpa)?;
        let seg = self.segs.get(usize::try_from(m.segid).ok()?)?.as_ref()?;
        let off = m.segoff.checked_add(gpa.checked_sub(m.gpa)?)?;
        let (pa, va, avail) = seg.phys_at(off)?;
        Some((pa, va, avail.min(m.end().saturating_sub(gpa))))
    }

    /// Frees everything: unmaps, returns the segments and the tables to the host.
    /// Bytes of every allocated segment.
    pub fn segments_len(&self) -> u64 {
        self.segs
            .iter()
            .flatten()
            .fold(0u64, |n, s| n.saturating_add(s.len))
    }

    pub fn destroy<H: Host>(mut self, host: &H) {
        self.s2.tlbi_all(host);
        for s in self.segs.iter_mut().flatten() {
            s.free(host);
        }
        self.s2.destroy(host);
    }
}
