//! Guest memory in this process: the mappings a backend hands out, wrapped as
//! vm-memory regions.
//!
//! vm-memory's own mmap backend does not build for FreeBSD, so [`VmRegion`] implements
//! `GuestMemoryRegion` over a [`Mapping`] we made ourselves (on FreeBSD an mmap of
//! /dev/vmm/NAME at offset = guest physical address, as FreeBSD's libvmmapi does), and
//! [`VmMemory`] is vm-memory's `GuestRegionCollection` of them, which provides
//! `GuestMemory` and `Bytes<GuestAddress>`.

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::Result as GmResult;
use vm_memory::{
    Address, GuestAddress, GuestMemoryError, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestRegionCollection, GuestUsize, MemoryRegionAddress, VolatileSlice,
};

/// Host memory that shows `len` bytes of guest memory at `ptr`, kept alive by `owner`
/// (which unmaps it when the last user is gone).
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: a Mapping is a pointer into shared memory that stays mapped while `_owner`
// lives; it carries no thread-affine state, and all accesses go through vm-memory's
// volatile accessors.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only allow volatile access through vm-memory.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &format_args!("{:#x}", self.len))
            .finish()
    }
}

impl Mapping {
    /// # Safety
    /// `ptr..ptr+len` must be readable and writable memory that stays mapped for as long
    /// as `owner` lives, and that memory is shared with the guest (so only volatile
    /// accesses are used on it).
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
        Mapping {
            ptr,
            len,
            _owner: owner,
        }
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An anonymous or file-backed `mmap(2)` that is unmapped on drop: the owner of the
/// FreeBSD backend's guest-memory mappings and of the fake's segment storage.
#[derive(Debug)]
pub struct MmapOwner {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory, not tied to a thread.
unsafe impl Send for MmapOwner {}
// SAFETY: MmapOwner only unmaps on drop; it hands out no references itself.
unsafe impl Sync for MmapOwner {}

impl MmapOwner {
    /// Maps `len` bytes of `fd` at `offset` shared and read/write (`fd` = -1 with
    /// `MAP_ANON` in `extra_flags` for anonymous memory).
    pub fn map(
        fd: libc::c_int,
        offset: u64,
        len: usize,
        extra_flags: libc::c_int,
    ) -> std::io::Result<Self> {
        if len == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing
        // memory is affected; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | extra_flags,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(MmapOwner { ptr, len })
    }

    /// Anonymous shared zero-filled memory.
    pub fn anonymous(len: usize) -> std::io::Result<Self> {
        Self::map(-1, 0, len, libc::MAP_ANON)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MmapOwner {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nothing else unmaps it;
        // every Mapping into it holds an Arc to this owner, so none outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One contiguous range of guest physical memory mapped in this process.
#[derive(Debug)]
pub struct VmRegion {
    start: GuestAddress,
    map: Mapping,
}

impl VmRegion {
    /// The region at guest physical `start` backed by `map`; `None` if it would wrap.
    pub fn new(start: GuestAddress, map: Mapping) -> Option<VmRegion> {
        if map.is_empty() {
            return None;
        }
        start.checked_add(map.len() as u64 - 1)?;
        Some(VmRegion { start, map })
    }

    /// The host address of the region's first byte.
    pub fn host_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }
}

impl GuestMemoryRegion for VmRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.map.len() as GuestUsize
    }

    fn start_addr(&self) -> GuestAddress {
        self.start
    }

    fn bitmap(&self) -> BS<'_, Self::B> {}

    fn get_host_address(&self, addr: MemoryRegionAddress) -> GmResult<*mut u8> {
        self.check_address(addr)
            .ok_or(GuestMemoryError::InvalidBackendAddress)
            // SAFETY: check_address proved addr < len, so the result stays inside the
            // mapping.
            .map(|a| unsafe { self.map.as_ptr().add(a.raw_value() as usize) })
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> GmResult<VolatileSlice<'_, BS<'_, Self::B>>> {
        let start = offset.raw_value() as usize;
        let end = start
            .checked_add(count)
            .ok_or(GuestMemoryError::InvalidBackendAddress)?;
        if end > self.map.len() {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        // SAFETY: start..end lies inside the mapping (checked above), which stays mapped
        // while `self` (holding the Mapping and its owner) is borrowed; guest memory is
        // only accessed volatilely.
        Ok(unsafe { VolatileSlice::with_bitmap(self.map.as_ptr().add(start), count, (), None) })
    }
}

impl GuestMemoryRegionBytes for VmRegion {}

/// The guest's memory as vm-memory sees it: implements `GuestMemory` (through
/// `GuestMemoryBackend`) and `Bytes<GuestAddress>`.
pub type VmMemory = GuestRegionCollection<VmRegion>;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory, GuestMemoryBackend};

    fn region(start: u64, len: usize) -> VmRegion {
        let owner = Arc::new(MmapOwner::anonymous(len).unwrap());
        let ptr = NonNull::new(owner.as_ptr()).unwrap();
        // SAFETY: ptr..ptr+len is the fresh anonymous mapping `owner` keeps alive.
        let map = unsafe { Mapping::new(ptr, len, owner) };
        VmRegion::new(GuestAddress(start), map).unwrap()
    }

    #[test]
    fn read_write_across_regions() {
        let mem =
            VmMemory::from_regions(vec![region(0x1000, 0x1000), region(0x2000, 0x2000)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1ffe))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1ffe)).unwrap(),
            0xdead_beef
        );
        let mut buf = [0u8; 2];
        mem.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert_eq!(buf, [0xad, 0xde]);
        assert!(mem.read_obj::<u64>(GuestAddress(0x3ffc)).is_err());
        assert!(mem.write_slice(&[1], GuestAddress(0x4000)).is_err());
        assert!(GuestMemoryBackend::check_range(
            &mem,
            GuestAddress(0x1000),
            0x3000
        ));
        assert!(!GuestMemoryBackend::check_range(
            &mem,
            GuestAddress(0x1000),
            0x3001
        ));
        let rw = vm_memory::Permissions::ReadWrite;
        assert!(GuestMemory::check_range(
            &mem,
            GuestAddress(0x1000),
            0x3000,
            rw
        ));
    }

    #[test]
    fn region_bounds() {
        let r = region(0, 0x1000);
        assert!(r.get_slice(MemoryRegionAddress(0xfff), 1).is_ok());
        assert!(r.get_slice(MemoryRegionAddress(0xfff), 2).is_err());
        assert!(r.get_host_address(MemoryRegionAddress(0x1000)).is_err());
        let owner = Arc::new(MmapOwner::anonymous(0x1000).unwrap());
        let ptr = NonNull::new(owner.as_ptr()).unwrap();
        // SAFETY: as in `region`.
        let map = unsafe { Mapping::new(ptr, 0x1000, owner) };
        assert!(VmRegion::new(GuestAddress(u64::MAX - 0x10), map).is_none());
    }
}
