//! Kernel memory and VM objects (FreeBSD 15.0 `sys/vm/vm_extern.h`, `sys/vm/vm_object.h`,
//! `sys/vm/vm.h`, `sys/sys/malloc.h`, `sys/arm64/include/pmap.h`,
//! `sys/arm64/include/vmparam.h`).
//!
//! * Page-table pages and other physically contiguous memory: `contigmalloc(9)` (or
//!   `kmem_alloc_contig`), physical address from `pmap_kextract` (what `vtophys` expands
//!   to on arm64).
//! * Physical to kernel virtual: the direct map, `DMAP_MIN_ADDRESS + (pa -
//!   dmap_phys_base)` for `dmap_phys_base <= pa < dmap_phys_max`.
//! * Guest memory for bhyve's mmap: FreeBSD 15 vmm allocates each memory segment as
//!   `vm_object_allocate(OBJT_SWAP, len >> PAGE_SHIFT)` (sys/dev/vmm/vmm_mem.c) and its
//!   `d_mmap_single` hands out that object with `vm_object_reference` after rewriting
//!   the offset (sys/dev/vmm/vmm_dev.c). See docs/freebsd-kmod.md for the choice between
//!   that and a device pager over wired pages.

use super::malloc::MallocTypeHead;
use super::types::{VmMemattr, VmOffset, VmOoffset, VmPaddr, VmPindex, VmProt, VmSize};
use core::ffi::{c_int, c_uint, c_ulong, c_void};

/// `enum obj_type` value `OBJT_SWAP` (`sys/vm/vm.h`): anonymous, swap-backed memory.
/// It is the second enumerator in every release (slot 0 was `OBJT_DEFAULT`, now unused).
pub const OBJT_SWAP: u8 = 1;

/// `OBJT_SG` (`sys/vm/vm.h`, the seventh enumerator of `enum obj_type`): an object
/// whose pages are the physical ranges of a `struct sglist` (sys/vm/sg_pager.c).
pub const OBJT_SG: u8 = 6;

/// `struct sglist_seg` (`sys/sys/sglist.h`).
#[repr(C)]
pub struct SglistSeg {
    pub ss_paddr: VmPaddr,
    pub ss_len: usize,
}

/// `struct sglist` (`sys/sys/sglist.h`, unchanged since its introduction in 8.0):
/// `sg_refs` counts the holders (`sglist_hold`/`sglist_free`); an `OBJT_SG` object holds
/// one reference on its list until the object is destroyed.
#[repr(C)]
pub struct Sglist {
    pub sg_segs: *mut SglistSeg,
    pub sg_refs: c_uint,
    pub sg_nseg: u16,
    pub sg_maxseg: u16,
}

/// `vm_memattr_t` values of arm64 (`sys/arm64/include/vm.h`: indices into MAIR_EL1).
pub const VM_MEMATTR_DEVICE_NGNRNE: VmMemattr = 0;
pub const VM_MEMATTR_UNCACHEABLE: VmMemattr = 1;
pub const VM_MEMATTR_WRITE_BACK: VmMemattr = 2;
pub const VM_MEMATTR_WRITE_THROUGH: VmMemattr = 3;
pub const VM_MEMATTR_DEVICE_NGNRE: VmMemattr = 4;
/// `VM_MEMATTR_DEFAULT` is `VM_MEMATTR_WRITE_BACK` on arm64.
pub const VM_MEMATTR_DEFAULT: VmMemattr = VM_MEMATTR_WRITE_BACK;

/// `DMAP_MIN_ADDRESS` (`sys/arm64/include/vmparam.h`): base of the direct map.
pub const DMAP_MIN_ADDRESS: u64 = 0xffff_a000_0000_0000;
/// `DMAP_MAX_ADDRESS`: end of the direct map window (95 TiB).
pub const DMAP_MAX_ADDRESS: u64 = 0xffff_ff00_0000_0000;

/// Opaque `struct vm_object` (`vm_object_t` is a pointer to it).
#[repr(C)]
pub struct VmObject {
    _private: [u8; 0],
}

/// `PHYS_TO_DMAP(pa)` with the `PHYS_IN_DMAP` check (`sys/arm64/include/vmparam.h`):
/// `None` when `pa` is outside `[base, max)` or the result would leave the window.
pub fn phys_to_dmap(pa: VmPaddr, base: VmPaddr, max: VmPaddr) -> Option<VmOffset> {
    if pa < base || pa >= max {
        return None;
    }
    let va = DMAP_MIN_ADDRESS.checked_add(pa.checked_sub(base)?)?;
    (va < DMAP_MAX_ADDRESS).then_some(va)
}

/// `DMAP_TO_PHYS(va)` with the range check: `None` outside the direct map.
pub fn dmap_to_phys(va: VmOffset, base: VmPaddr, max: VmPaddr) -> Option<VmPaddr> {
    if !(DMAP_MIN_ADDRESS..DMAP_MAX_ADDRESS).contains(&va) {
        return None;
    }
    let pa = va.checked_sub(DMAP_MIN_ADDRESS)?.checked_add(base)?;
    (pa < max).then_some(pa)
}

extern "C" {
    /// `vm_paddr_t dmap_phys_base` (arm64 pmap.c): first physical address in the DMAP.
    pub static dmap_phys_base: VmPaddr;
    /// `vm_paddr_t dmap_phys_max` (arm64 pmap.c): end of the DMAP'd physical range.
    pub static dmap_phys_max: VmPaddr;

    /// `vm_paddr_t pmap_kextract(vm_offset_t va)` (arm64 pmap.c): physical address of a
    /// kernel virtual address; `vtophys(va)` is a macro for it on arm64. Returns 0 for
    /// an unmapped address.
    pub fn pmap_kextract(va: VmOffset) -> VmPaddr;

    /// `void *contigmalloc(unsigned long size, struct malloc_type *type, int flags,
    ///     vm_paddr_t low, vm_paddr_t high, unsigned long alignment,
    ///     vm_paddr_t boundary)`: wired, physically contiguous, mapped write-back.
    pub fn contigmalloc(
        size: c_ulong,
        type_: *mut MallocTypeHead,
        flags: c_int,
        low: VmPaddr,
        high: VmPaddr,
        alignment: c_ulong,
        boundary: VmPaddr,
    ) -> *mut c_void;
    /// `void contigfree(void *addr, unsigned long size, struct malloc_type *type)`.
    pub fn contigfree(addr: *mut c_void, size: c_ulong, type_: *mut MallocTypeHead);

    /// `void *kmem_alloc_contig(vm_size_t size, int flags, vm_paddr_t low,
    ///     vm_paddr_t high, u_long alignment, vm_paddr_t boundary, vm_memattr_t memattr)`
    /// (`sys/vm/vm_extern.h`, void * since FreeBSD 14).
    pub fn kmem_alloc_contig(
        size: VmSize,
        flags: c_int,
        low: VmPaddr,
        high: VmPaddr,
        alignment: c_ulong,
        boundary: VmPaddr,
        memattr: VmMemattr,
    ) -> *mut c_void;
    /// `void *kmem_malloc(vm_size_t size, int flags)`: wired kernel memory, page
    /// granular, not necessarily contiguous.
    pub fn kmem_malloc(size: VmSize, flags: c_int) -> *mut c_void;
    /// `void kmem_free(void *addr, vm_size_t size)`.
    pub fn kmem_free(addr: *mut c_void, size: VmSize);

    /// `vm_object_t vm_object_allocate(objtype_t type, vm_pindex_t size)` (size in
    /// pages). Returns a referenced object.
    pub fn vm_object_allocate(type_: u8, size: VmPindex) -> *mut VmObject;
    /// `void vm_object_reference(vm_object_t)`: one more reference (what
    /// `d_mmap_single` returns to the mmap code).
    pub fn vm_object_reference(object: *mut VmObject);
    /// `void vm_object_deallocate(vm_object_t)`: drops a reference; the last frees it.
    pub fn vm_object_deallocate(object: *mut VmObject);

    /// `struct sglist *sglist_alloc(int nsegs, int mflags)` (sys/kern/subr_sglist.c):
    /// an empty list for `nsegs` segments, one reference.
    pub fn sglist_alloc(nsegs: c_int, mflags: c_int) -> *mut Sglist;
    /// `int sglist_append_phys(struct sglist *sg, vm_paddr_t paddr, size_t len)`:
    /// appends (or merges) a physical range; `EFBIG` when the list is full.
    pub fn sglist_append_phys(sg: *mut Sglist, paddr: VmPaddr, len: usize) -> c_int;
    /// `void sglist_free(struct sglist *sg)`: drops a reference; the last frees it.
    pub fn sglist_free(sg: *mut Sglist);
    /// `vm_object_t vm_pager_allocate(objtype_t type, void *handle, vm_ooffset_t size,
    ///     vm_prot_t prot, vm_ooffset_t off, struct ucred *cred)` (`sys/vm/vm_pager.h`):
    /// with `OBJT_SG` and a list as handle, a new object over its ranges that holds a
    /// reference on the list (`sg_pager_alloc`). NULL on failure.
    pub fn vm_pager_allocate(
        type_: u8,
        handle: *mut c_void,
        size: VmOoffset,
        prot: VmProt,
        off: VmOoffset,
        cred: *mut c_void,
    ) -> *mut VmObject;
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x4000_0000;
    const MAX: u64 = 0x1_4000_0000;

    #[test]
    fn sglist_layout() {
        use core::mem::{offset_of, size_of};
        assert_eq!(size_of::<SglistSeg>(), 16);
        assert_eq!(offset_of!(Sglist, sg_refs), 8);
        assert_eq!(offset_of!(Sglist, sg_nseg), 12);
        assert_eq!(offset_of!(Sglist, sg_maxseg), 14);
        assert_eq!(size_of::<Sglist>(), 16);
        assert_eq!(OBJT_SG, 6);
    }

    #[test]
    fn dmap_round_trips_inside_the_window() {
        let va = phys_to_dmap(0x8000_1234, BASE, MAX);
        assert_eq!(va, Some(0xffff_a000_4000_1234));
        assert_eq!(
            dmap_to_phys(0xffff_a000_4000_1234, BASE, MAX),
            Some(0x8000_1234)
        );
    }

    #[test]
    fn dmap_refuses_addresses_outside_the_window() {
        assert_eq!(phys_to_dmap(BASE - 1, BASE, MAX), None);
        assert_eq!(phys_to_dmap(MAX, BASE, MAX), None);
        assert_eq!(dmap_to_phys(0xffff_0000_0000_0000, BASE, MAX), None);
        assert_eq!(
            dmap_to_phys(DMAP_MIN_ADDRESS + (MAX - BASE), BASE, MAX),
            None
        );
        assert_eq!(dmap_to_phys(u64::MAX, BASE, MAX), None);
    }
}
