//! Bringing the hypervisor up the way vmm.ko does (FreeBSD's arm_setup_vectors), on
//! every CPU: copy the EL2 blob into page-aligned contiguous memory, build EL2's
//! identity-mapped tables (blob, per-CPU stacks, and whatever the core maps later),
//! then `hvc #0` to the stub with x0 = the blob's init vectors, and a second `hvc #0`
//! with TTBR0_EL2, the stack top, TCR_EL2, SCTLR_EL2 and VTCR_EL2. Unload is
//! HYP_CLEANUP with the stub's vectors on every CPU.

extern crate alloc;
use crate::kernel::cpu;
use crate::kernel::mm::{
    alloc_pages, free_pages_at, pa_to_va, va_to_pa, TablePages, MAIR_WB, MAX_CPUS, PAGE,
};
use vmm_arm64::IdRegs;
use vmm_core::el2::El2Config;
use vmm_core::el2pt::{attrs_code, attrs_data, El2Tables};
use vmm_core::sync::SpinLock;
use vmm_sys::hyp::HYP_CLEANUP;

/// The EL2 blob, built by `cargo xtask build-el2`.
pub static EL2_BLOB: &[u8] = include_bytes!(env!("VMM_EL2_BLOB"));

pub const EL2_STACK_PAGES: usize = 4;

pub struct Hyp {
    pub blob_pa: u64,
    blob_pages: usize,
    tables: El2Tables,
    stacks: [u64; MAX_CPUS],
}

pub static HYP: SpinLock<Option<Hyp>> = SpinLock::new_spin(None);

/// The IPA size of the world-switch tests' stage-2 tables.
pub const TEST_IPA_BITS: u32 = 39;

/// TCR_EL2, SCTLR_EL2 and VTCR_EL2 as vmm-core computes them for this CPU.
pub fn el2_config() -> Option<El2Config> {
    El2Config::new(IdRegs::read().mmfr0, TEST_IPA_BITS).ok()
}

/// `hvc #0` with up to five arguments, IRQs masked (as vmm.ko calls it).
pub fn hvc(x0: u64, x1: u64, x2: u64, x3: u64, x4: u64) -> u64 {
    hvc7(x0, &[x1, x2, x3, x4, 0, 0, 0])
}

/// `hvc #0` with x0 = `func` and x1..x7 = `a` (the core's `Host::hyp_call`).
pub fn hvc7(func: u64, a: &[u64; 7]) -> u64 {
    let ret: u64;
    // SAFETY: EL2 preserves x18..x30 and SP and clobbers at most what the C ABI lets
    // a call clobber (the EL2 blob's contract); interrupts are masked around the call.
    unsafe {
        core::arch::asm!(
            "mrs x20, daif",
            "msr daifset, #3",
            "hvc #0",
            "msr daif, x20",
            out("x20") _,
            inout("x0") func => ret,
            inout("x1") a[0] => _,
            inout("x2") a[1] => _,
            inout("x3") a[2] => _,
            inout("x4") a[3] => _,
            inout("x5") a[4] => _,
            inout("x6") a[5] => _,
            inout("x7") a[6] => _,
            out("x8") _, out("x9") _, out("x10") _,
            out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _, out("x30") _,
        )
    };
    ret
}

/// A hypercall into our EL2 code once it is installed.
pub fn hyp_call(func: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    hvc(func, a1, a2, a3, 0)
}

/// Makes `len` bytes at physical address `pa` (code we wrote) coherent for EL2 and
/// instruction fetch.
pub fn sync_icache(pa: u64, len: u64) {
    // SAFETY: the range is RAM the testbed owns, mapped at its direct-map address.
    unsafe { vmm_arm64::cache::sync_for_guest(pa_to_va(pa) as usize, len as usize) };
}

pub fn stub_vectors_pa() -> u64 {
    va_to_pa(core::ptr::addr_of!(crate::kernel::boot::hyp_stub_vectors) as u64)
}

impl Hyp {
    /// Maps `[pa, pa+len)` identity at EL2 as data (read-write, never executable).
    pub fn map_data(&mut self, pa: u64, len: u64) -> Option<()> {
        self.tables
            .map_identity(&TablePages, pa, len as usize, attrs_data(MAIR_WB))
            .ok()
    }
}

fn init_this_cpu(_: u64) -> u64 {
    let (blob, root, top) = {
        let g = HYP.lock();
        let Some(h) = g.as_ref() else { return 1 };
        (
            h.blob_pa,
            h.tables.ttbr0(),
            h.stacks[cpu::id()] + (EL2_STACK_PAGES as u64) * PAGE,
        )
    };
    let r = hvc(blob, 0, 0, 0, 0);
    if r != blob {
        // The stub returns x0 untouched; anything else means it is not there.
        return 2;
    }
    let Some(c) = el2_config() else { return 3 };
    hvc(root, top, c.tcr_el2, c.sctlr_el2, c.vtcr_el2)
}

fn cleanup_this_cpu(_: u64) -> u64 {
    hyp_call(HYP_CLEANUP, stub_vectors_pa(), 0, 0)
}

/// Loads the hypervisor on every online CPU. Returns per-CPU init results (0 = ok).
pub fn load(ncpus: usize) -> Result<[u64; MAX_CPUS], &'static str> {
    let blob_pages = EL2_BLOB.len().div_ceil(PAGE as usize);
    let blob_pa = alloc_pages(blob_pages).ok_or("no memory for the EL2 blob")?;
    // SAFETY: the fresh pages are ours and large enough.
    unsafe {
        core::ptr::copy_nonoverlapping(
            EL2_BLOB.as_ptr(),
            pa_to_va(blob_pa) as *mut u8,
            EL2_BLOB.len(),
        )
    };
    sync_icache(blob_pa, (blob_pages as u64) * PAGE);
    let mut tables = El2Tables::new(&TablePages).map_err(|_| "no memory for EL2 tables")?;
    tables
        .map_identity(
            &TablePages,
            blob_pa,
            blob_pages * PAGE as usize,
            attrs_code(MAIR_WB),
        )
        .map_err(|_| "EL2 map")?;
    let mut stacks = [0u64; MAX_CPUS];
    let mut h = Hyp {
        blob_pa,
        blob_pages,
        tables,
        stacks,
    };
    for s in stacks.iter_mut() {
        *s = alloc_pages(EL2_STACK_PAGES).ok_or("no memory for EL2 stacks")?;
        h.map_data(*s, (EL2_STACK_PAGES as u64) * PAGE)
            .ok_or("EL2 map")?;
    }
    h.stacks = stacks;
    *HYP.lock() = Some(h);
    let mut res = [u64::MAX; MAX_CPUS];
    for (c, r) in res.iter_mut().enumerate().take(ncpus) {
        *r = cpu::run_on(c, init_this_cpu, 0);
    }
    Ok(res)
}

/// HYP_CLEANUP on every CPU, then frees the blob, stacks and tables.
pub fn unload(ncpus: usize) -> [u64; MAX_CPUS] {
    let mut res = [u64::MAX; MAX_CPUS];
    for (c, r) in res.iter_mut().enumerate().take(ncpus) {
        *r = cpu::run_on(c, cleanup_this_cpu, 0);
    }
    if let Some(h) = HYP.lock().take() {
        free_pages_at(h.blob_pa, h.blob_pages);
        for s in h.stacks {
            free_pages_at(s, EL2_STACK_PAGES);
        }
        h.tables.free(&TablePages);
    }
    res
}

/// Maps memory the EL2 code must reach (contexts): identity, data.
pub fn map_el2_data(pa: u64, len: u64) -> Option<()> {
    HYP.lock().as_mut()?.map_data(pa, len)
}

/// Reads the EL2 registers through the stub with the probe vectors (only valid while
/// our hypervisor is not installed). Returns None if the stub did not answer.
pub fn probe_el2() -> Option<[u64; 16]> {
    #[repr(C, align(64))]
    struct Buf([u64; 16]);
    let mut buf = alloc::boxed::Box::new(Buf([0; 16]));
    let probe = va_to_pa(core::ptr::addr_of!(crate::kernel::boot::el2_probe_vectors) as u64);
    if hvc(probe, 0, 0, 0, 0) != probe {
        return None;
    }
    let va = &mut *buf as *mut Buf as u64;
    // EL2 writes with its MMU off (non-cacheable): no dirty line may overwrite that
    // afterwards, and no stale line may hide it.
    // SAFETY: cleans and invalidates our own (mapped) buffer.
    unsafe { vmm_arm64::cache::clean_inval_dcache_poc(va as usize, 128) };
    hvc(va_to_pa(va), stub_vectors_pa(), 0, 0, 0);
    // SAFETY: invalidates our own buffer, cleaned above and written since only by EL2.
    unsafe { vmm_arm64::cache::inval_dcache_poc(va as usize, 128) };
    // SAFETY: volatile read of the buffer EL2 wrote.
    Some(unsafe { core::ptr::read_volatile(&buf.0) })
}
