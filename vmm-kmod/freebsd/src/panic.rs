//! Rust panics and the global allocator inside vmm.ko.
//!
//! * A Rust panic calls panic(9) with the message (formatted into a fixed buffer: the
//!   allocator may be the thing that failed). The module is built with
//!   `panic = "abort"`, so there is no unwinding; panic(9) does not return.
//! * The global allocator is malloc(9) with the module's type `M_VMM`, `M_NOWAIT`:
//!   the core may allocate with a spin lock held or from a callout, where malloc(9)
//!   must not sleep; the core's large allocations use `try_reserve` and fail
//!   gracefully with `ENOMEM`. malloc(9) aligns to at least a pointer; larger
//!   alignments are met by over-allocating and keeping the original address in the
//!   word just below the aligned block.
//!
//! The vmm.ko crate installs both (`#[panic_handler]`, `#[global_allocator]`).

use super::fmtbuf::FmtBuf;
use super::host::M_VMM;
use super::kern;
use super::malloc::{self, M_NOWAIT};
use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_int;
use core::fmt::Write;
use vmm_core::alignalloc::{aligned_start, over_alloc_size, MALLOC_MIN_ALIGN};

/// Calls panic(9) with `info`'s message and location.
pub fn kernel_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut b = FmtBuf::<256>::new();
    let _ = write!(b, "{info}");
    panic_bytes(b.as_bytes())
}

/// Calls panic(9) with a fixed message.
pub fn kernel_panic_str(msg: &str) -> ! {
    panic_bytes(msg.as_bytes())
}

fn panic_bytes(s: &[u8]) -> ! {
    let len = c_int::try_from(s.len()).unwrap_or(0);
    // SAFETY: "%.*s" reads exactly `len` bytes of `s`; panic(9) does not return.
    unsafe { kern::panic(c"vmm: %.*s".as_ptr(), len, s.as_ptr()) }
}

/// malloc(9) as Rust's global allocator.
pub struct KernelAllocator;

// SAFETY: every block comes from malloc(9), is at least `layout.size()` bytes and
// aligned to `layout.align()`, and is freed exactly once with the same type.
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(1);
        if layout.align() <= MALLOC_MIN_ALIGN {
            // SAFETY: plain allocation; NULL is passed on as allocation failure.
            return unsafe { malloc::malloc(size, M_VMM.as_ptr(), M_NOWAIT).cast() };
        }
        let Some(total) = over_alloc_size(size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: as above.
        let raw = unsafe { malloc::malloc(total, M_VMM.as_ptr(), M_NOWAIT) }.cast::<u8>();
        if raw.is_null() {
            return raw;
        }
        let Some(aligned) = aligned_start(raw as usize, layout.align()) else {
            // SAFETY: returning the block just allocated.
            unsafe { malloc::free(raw.cast(), M_VMM.as_ptr()) };
            return core::ptr::null_mut();
        };
        // SAFETY: `aligned_start` keeps the block and the word below it inside the
        // allocation (tested in `alignalloc`); offsetting from `raw` keeps provenance.
        let p = unsafe { raw.add(aligned.wrapping_sub(raw as usize)) };
        // SAFETY: p - 8 >= raw and is 8-aligned: the saved word is ours.
        unsafe { p.cast::<*mut u8>().sub(1).write(raw) };
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let raw = if layout.align() <= MALLOC_MIN_ALIGN {
            ptr
        } else {
            // SAFETY: `alloc` stored the original address just below the block.
            unsafe { ptr.cast::<*mut u8>().sub(1).read() }
        };
        // SAFETY: `raw` came from malloc(9) with M_VMM.
        unsafe { malloc::free(raw.cast(), M_VMM.as_ptr()) };
    }
}
