//! Memory: the direct map (VA = KBASE + PA, which also holds the kernel image), a
//! bitmap page allocator over the RAM after the kernel, and the heap (the global
//! allocator) on top of it.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use vmm_core::sync::SpinLock;

/// Start of the TTBR1 half with a 39-bit VA; PA p is mapped at KBASE + p.
pub const KBASE: u64 = 0xffff_ff80_0000_0000;
/// CPUs the testbed can use: the tests run on 2 (`-smp 2`), the served testbed on 3
/// (CPU 0 serves the channel, one run CPU per vCPU of a 2-vCPU guest).
pub const MAX_CPUS: usize = 3;
pub const PAGE: u64 = 4096;
/// QEMU virt RAM (-m 1G).
pub const RAM_START: u64 = 0x4000_0000;
pub const RAM_END: u64 = 0x8000_0000;
const NPAGES: usize = ((RAM_END - RAM_START) / PAGE) as usize;

pub fn pa_to_va(pa: u64) -> u64 {
    pa + KBASE
}

/// Physical address of a direct-map (or kernel image) address.
pub fn va_to_pa(va: u64) -> u64 {
    va - KBASE
}

struct Frames {
    /// One bit per RAM page, set = in use.
    used: [u64; NPAGES / 64],
    free: usize,
    hint: usize,
    /// Where [`scrub`] looks next.
    scrub_hint: usize,
}

static FRAMES: SpinLock<Frames> = SpinLock::new_spin(Frames {
    used: [u64::MAX; NPAGES / 64],
    free: 0,
    hint: 0,
    scrub_hint: 0,
});

/// One bit per RAM page, set = may hold old data: zeroed at allocation or, while the
/// served testbed is idle, by [`scrub`]. A page's bit changes only while the page is
/// free (set by its owner's free, cleared by `scrub` under the frames lock) or owned
/// (cleared by the allocation that zeroes it), so atomics on the shared words suffice.
static DIRTY: [AtomicU64; NPAGES / 64] = [const { AtomicU64::new(0) }; NPAGES / 64];
/// Pages with their [`DIRTY`] bit set.
static DIRTY_PAGES: AtomicUsize = AtomicUsize::new(0);

fn is_dirty(i: usize) -> bool {
    DIRTY[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
}

fn set_dirty(i: usize) {
    if DIRTY[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel) & (1 << (i % 64)) == 0 {
        DIRTY_PAGES.fetch_add(1, Ordering::AcqRel);
    }
}

fn clear_dirty(i: usize) {
    if DIRTY[i / 64].fetch_and(!(1 << (i % 64)), Ordering::AcqRel) & (1 << (i % 64)) != 0 {
        DIRTY_PAGES.fetch_sub(1, Ordering::AcqRel);
    }
}

extern "C" {
    static __kernel_end: u8;
}

/// Gives every page from the end of the kernel image to the end of RAM to the allocator.
pub fn init() {
    let end = va_to_pa(core::ptr::addr_of!(__kernel_end) as u64);
    let first = ((end - RAM_START).div_ceil(PAGE)) as usize;
    let mut f = FRAMES.lock();
    for i in first..NPAGES {
        f.used[i / 64] &= !(1u64 << (i % 64));
        // RAM may hold anything (a RAM file left by an earlier testbed).
        set_dirty(i);
    }
    f.free = NPAGES - first;
    f.hint = first;
    f.scrub_hint = first;
}

/// Zeroes up to `batch` free pages that may hold old data, holding the frames lock
/// (a batch is short: 16 pages are ~16 µs under TCG), so the page counts never move.
/// The served testbed calls it when CPU 0 has nothing else to do: a VM's memory, freed
/// when it is destroyed, is zero by the time the next VM asks for it, and the first
/// writes to pages where the old guest's code ran (which make QEMU drop its
/// translations, slowly) are not paid by the next bhyveload. `false`: nothing to do.
pub fn scrub(batch: usize) -> bool {
    if DIRTY_PAGES.load(Ordering::Acquire) == 0 {
        return false;
    }
    let mut f = FRAMES.lock();
    let mut done = 0;
    let mut i = f.scrub_hint;
    for _ in 0..NPAGES {
        if done == batch {
            break;
        }
        if i >= NPAGES {
            i = 0;
        }
        if f.used[i / 64] & (1 << (i % 64)) == 0 && is_dirty(i) {
            // SAFETY: the page is free and the frames lock is held, so nobody else
            // uses it; it is mapped through the direct map.
            unsafe { zero_pages(pa_to_va(RAM_START + i as u64 * PAGE), 1) };
            clear_dirty(i);
            done += 1;
        }
        i += 1;
    }
    f.scrub_hint = i;
    done > 0
}

pub fn free_pages() -> usize {
    FRAMES.lock().free
}

/// `n` physically contiguous zeroed pages; returns the physical address.
pub fn alloc_pages(n: usize) -> Option<u64> {
    alloc_pages_aligned(n, PAGE)
}

/// `n` contiguous zeroed pages whose physical address is a multiple of `align`.
/// Zeroes `n` pages at `va` with 16-byte stores, 256 bytes per iteration: under TCG a
/// store is a few host instructions where DC ZVA is a helper call per 64 bytes, and a
/// VM's memory is all allocated (and zeroed) when it is created: 256 MiB took about
/// 150 ms with DC ZVA or `write_bytes`, 60 ms this way.
///
/// # Safety
/// The pages are mapped (the direct map) and nobody else uses them.
unsafe fn zero_pages(va: u64, n: usize) {
    const STEP: usize = 256;
    let start = va as usize;
    let len = n * PAGE as usize;
    for a in (start..start + len).step_by(STEP) {
        // SAFETY: `a..a + 256` lies inside the caller's pages (their length is a
        // multiple of 256), which nobody else uses.
        unsafe {
            core::arch::asm!(
                "stp xzr, xzr, [{0}]",
                "stp xzr, xzr, [{0}, #16]",
                "stp xzr, xzr, [{0}, #32]",
                "stp xzr, xzr, [{0}, #48]",
                "stp xzr, xzr, [{0}, #64]",
                "stp xzr, xzr, [{0}, #80]",
                "stp xzr, xzr, [{0}, #96]",
                "stp xzr, xzr, [{0}, #112]",
                "stp xzr, xzr, [{0}, #128]",
                "stp xzr, xzr, [{0}, #144]",
                "stp xzr, xzr, [{0}, #160]",
                "stp xzr, xzr, [{0}, #176]",
                "stp xzr, xzr, [{0}, #192]",
                "stp xzr, xzr, [{0}, #208]",
                "stp xzr, xzr, [{0}, #224]",
                "stp xzr, xzr, [{0}, #240]",
                in(reg) a,
                options(nostack, preserves_flags)
            )
        };
    }
}

pub fn alloc_pages_aligned(n: usize, align: u64) -> Option<u64> {
    if n == 0 || !align.is_power_of_two() || align < PAGE {
        return None;
    }
    let step = (align / PAGE) as usize;
    let mut f = FRAMES.lock();
    let mut start = f.hint;
    let mut tries = 0;
    while tries < 2 {
        let mut run = 0;
        let mut i = start;
        while i < NPAGES {
            if run == 0 && !i.is_multiple_of(step) {
                // RAM_START is 1 GiB aligned, so index alignment is address alignment.
                i += 1;
                continue;
            }
            if f.used[i / 64] & (1 << (i % 64)) == 0 {
                run += 1;
                if run == n {
                    let first = i + 1 - n;
                    for j in first..=i {
                        f.used[j / 64] |= 1 << (j % 64);
                    }
                    f.free -= n;
                    f.hint = i + 1;
                    drop(f);
                    zero_dirty(first, n);
                    return Some(RAM_START + first as u64 * PAGE);
                }
            } else {
                run = 0;
            }
            i += 1;
        }
        start = 0;
        tries += 1;
    }
    None
}

/// Zeroes the pages of the just-allocated `first..first + n` that may hold old data,
/// each stretch of them at once.
fn zero_dirty(first: usize, n: usize) {
    let mut j = first;
    while j < first + n {
        if !is_dirty(j) {
            j += 1;
            continue;
        }
        let start = j;
        while j < first + n && is_dirty(j) {
            j += 1;
        }
        // SAFETY: the pages were just allocated to the caller, so nobody else uses
        // them; they are mapped through the direct map.
        unsafe { zero_pages(pa_to_va(RAM_START + start as u64 * PAGE), j - start) };
        for k in start..j {
            clear_dirty(k);
        }
    }
}

pub fn free_pages_at(pa: u64, n: usize) {
    let first = ((pa - RAM_START) / PAGE) as usize;
    // Dirty before free: whoever finds the page free finds it dirty too.
    for j in first..first + n {
        set_dirty(j);
    }
    let mut f = FRAMES.lock();
    for j in first..first + n {
        assert!(
            f.used[j / 64] & (1 << (j % 64)) != 0,
            "double free of page {pa:#x}"
        );
        f.used[j / 64] &= !(1 << (j % 64));
    }
    f.free += n;
    if first < f.hint {
        f.hint = first;
    }
}

/// Heap: size classes 16..2048 bytes carved from pages, larger blocks as whole pages.
struct Heap {
    free: [u64; 8],
}

const CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

pub struct KernelAlloc;

static HEAP: SpinLock<Heap> = SpinLock::new_spin(Heap { free: [0; 8] });

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align());
    CLASSES.iter().position(|&c| c >= size)
}

// SAFETY: blocks come from the page allocator and are handed out once until freed.
unsafe impl GlobalAlloc for KernelAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(c) => {
                let mut h = HEAP.lock();
                if h.free[c] == 0 {
                    let Some(pa) = alloc_pages(1) else {
                        return core::ptr::null_mut();
                    };
                    let base = pa_to_va(pa);
                    let sz = CLASSES[c] as u64;
                    let mut off = 0;
                    while off + sz <= PAGE {
                        let blk = base + off;
                        // SAFETY: blk is inside the fresh page.
                        unsafe { *(blk as *mut u64) = h.free[c] };
                        h.free[c] = blk;
                        off += sz;
                    }
                }
                let blk = h.free[c];
                // SAFETY: blk heads the free list; its first word links the next.
                h.free[c] = unsafe { *(blk as *const u64) };
                blk as *mut u8
            }
            None => {
                let n = layout.size().div_ceil(PAGE as usize);
                alloc_pages(n).map_or(core::ptr::null_mut(), |pa| pa_to_va(pa) as *mut u8)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(&layout) {
            Some(c) => {
                let mut h = HEAP.lock();
                // SAFETY: ptr was handed out by alloc for this class.
                unsafe { *(ptr as *mut u64) = h.free[c] };
                h.free[c] = ptr as u64;
            }
            None => free_pages_at(va_to_pa(ptr as u64), layout.size().div_ceil(PAGE as usize)),
        }
    }
}

/// The MAIR index of normal write-back memory: boot.rs sets MAIR_EL1 so, and EL2 init
/// copies MAIR_EL1 into MAIR_EL2.
pub const MAIR_WB: u64 = 1;

/// Page-table pages for the shipped EL2 table code (`vmm_core::el2pt`): single pages
/// from the frame allocator, reached through the direct map.
pub struct TablePages;

impl vmm_core::el2pt::TableMem for TablePages {
    fn alloc_table(&self) -> Option<(u64, usize)> {
        alloc_pages(1).map(|pa| (pa, 0))
    }
    fn free_table(&self, pa: u64, _cookie: usize) {
        free_pages_at(pa, 1);
    }
    fn table_ptr(&self, pa: u64) -> Option<*mut u64> {
        Some(pa_to_va(pa) as *mut u64)
    }
    fn publish(&self) {
        // The table walker reads memory: make the new entries visible to it.
        vmm_arm64::barrier::dsb_ish();
    }
}
