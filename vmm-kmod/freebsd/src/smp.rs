//! CPUs: `smp_rendezvous(9)`, IPIs and the per-CPU area (FreeBSD 15.0 `sys/sys/smp.h`,
//! `sys/arm64/include/smp.h`, `sys/sys/pcpu.h`, `sys/arm64/include/pcpu.h`).
//!
//! * vmm brings EL2 up on every CPU with `smp_rendezvous(NULL, action, NULL, arg)`
//!   (`arm_setup_vectors` in sys/arm64/vmm/vmm_arm64.c); the action runs on each CPU
//!   with interrupts disabled, the caller waits for all of them.
//! * A vCPU running on another host CPU is kicked with `ipi_cpu(hostcpu, vmm_ipinum)`;
//!   on arm64 `vmm_ipinum` is never assigned, so it is 0, `IPI_AST`: the IPI makes the
//!   guest exit to EL2 and the host then just runs its AST check.
//! * The current CPU is `PCPU_GET(cpuid)`: arm64 keeps the `struct pcpu *` in x18.
//!   `pc_curthread` is its first field (`curthread` is `*(x18)`); `pc_cpuid` follows
//!   five pointers, `pc_switchtime` and `pc_switchticks`, at offset 52, or 60 in trees
//!   that added `void *pc_sched` after `pc_curpcb`. [`select_cpuid_offset`] picks the
//!   right one at load time by checking every CPU's area against `cpuid_to_pcpu[]`,
//!   so the module does not depend on which of the two layouts the kernel has.

use core::ffi::{c_int, c_uint, c_void};

/// `IPI_AST` (`sys/arm64/include/smp.h`, first enumerator): what vmm sends to kick a
/// running vCPU.
pub const IPI_AST: c_uint = 0;

/// Offset of `pc_curthread` in `struct pcpu`.
pub const PC_CURTHREAD_OFFSET: usize = 0;
/// Candidate offsets of `u_int pc_cpuid` in `struct pcpu` (see the module docs).
pub const PC_CPUID_OFFSETS: [usize; 2] = [52, 60];

/// `void (*)(void *)`: the setup, action and teardown functions of `smp_rendezvous`.
pub type RendezvousFunc = unsafe extern "C" fn(*mut c_void);

/// Opaque `struct pcpu`.
#[repr(C)]
pub struct Pcpu {
    _private: [u8; 0],
}

/// Picks the offset of `pc_cpuid` among [`PC_CPUID_OFFSETS`]: the one at which, for
/// every CPU id `0..=maxid` whose `struct pcpu` exists, `read(id, offset)` returns `id`.
///
/// `read(id, off)` returns the `u_int` at byte `off` of CPU `id`'s `struct pcpu`, or
/// `None` when that CPU has no per-CPU area. Returns `None` when no candidate or more
/// than one candidate fits (then the caller must refuse to load: it cannot tell CPUs
/// apart). With a single CPU both candidates may read 0; any answer is then correct
/// since the only CPU id is 0, and the first candidate is returned.
pub fn select_cpuid_offset(maxid: u32, read: impl Fn(u32, usize) -> Option<u32>) -> Option<usize> {
    let fits = |off: usize| {
        let mut seen = false;
        for id in 0..=maxid {
            match read(id, off) {
                Some(v) if v == id => seen = true,
                Some(_) => return false,
                None => {}
            }
        }
        seen
    };
    let mut found = PC_CPUID_OFFSETS.iter().copied().filter(|&o| fits(o));
    let first = found.next()?;
    if maxid == 0 || found.next().is_none() {
        Some(first)
    } else {
        None
    }
}

/// The `struct pcpu *` of the CPU this runs on (register x18).
///
/// This is the only place the module reads x18; it never writes it (the whole module is
/// built with `-Zfixed-x18`). The CI's x18 scan allows exactly this read.
#[cfg(target_arch = "aarch64")]
#[inline(never)]
#[no_mangle]
pub extern "C" fn vmm_freebsd_pcpu() -> *mut Pcpu {
    let p: *mut Pcpu;
    // SAFETY: reading x18 has no side effect; FreeBSD/arm64 keeps the per-CPU pointer
    // there in kernel mode for the whole life of the system.
    unsafe {
        core::arch::asm!("mov {}, x18", out(reg) p, options(nomem, nostack, preserves_flags))
    };
    p
}

/// `cpuid_to_pcpu[id]`, or `None` for an id above `mp_maxid` or an absent CPU.
#[cfg(target_arch = "aarch64")]
pub fn pcpu_of(id: u32) -> Option<*mut Pcpu> {
    // SAFETY: `mp_maxid` is set before any module loads and never changes.
    let maxid = unsafe { core::ptr::addr_of!(mp_maxid).read() };
    if id > maxid {
        return None;
    }
    let idx = usize::try_from(id).ok()?;
    // SAFETY: `cpuid_to_pcpu` has MAXCPU > mp_maxid entries; `idx <= mp_maxid`.
    let p = unsafe {
        core::ptr::addr_of!(cpuid_to_pcpu)
            .cast::<*mut Pcpu>()
            .add(idx)
            .read()
    };
    (!p.is_null()).then_some(p)
}

/// Finds the offset of `pc_cpuid` in this kernel's `struct pcpu` (see
/// [`select_cpuid_offset`]). Call once at `MOD_LOAD`; `None` means refuse to load.
#[cfg(target_arch = "aarch64")]
pub fn discover_cpuid_offset() -> Option<usize> {
    // SAFETY: as in `pcpu_of`.
    let maxid = unsafe { core::ptr::addr_of!(mp_maxid).read() };
    select_cpuid_offset(maxid, |id, off| {
        let p = pcpu_of(id)?;
        // SAFETY: `p` is a live `struct pcpu`, larger than `off + 4` for both
        // candidate offsets (its MI part alone is several hundred bytes).
        Some(unsafe { p.cast::<u8>().add(off).cast::<u32>().read_volatile() })
    })
}

/// The id of the CPU this runs on, `PCPU_GET(cpuid)`, given the offset found by
/// [`discover_cpuid_offset`]. Stable only while the thread cannot migrate (interrupts
/// off, a spin lock held, or pinned).
#[cfg(target_arch = "aarch64")]
pub fn curcpu(cpuid_offset: usize) -> u32 {
    let p = vmm_freebsd_pcpu();
    // SAFETY: x18 always points at this CPU's live `struct pcpu`; the offset was
    // validated against every CPU's area at load.
    unsafe {
        p.cast::<u8>()
            .add(cpuid_offset)
            .cast::<u32>()
            .read_volatile()
    }
}

/// `curthread`: the first word of the per-CPU area.
#[cfg(target_arch = "aarch64")]
pub fn curthread() -> *mut super::cdev::Thread {
    let p = vmm_freebsd_pcpu();
    // SAFETY: `pc_curthread` is the first member of `struct pcpu`.
    unsafe { p.cast::<*mut super::cdev::Thread>().read_volatile() }
}

extern "C" {
    /// `int mp_ncpus` (subr_smp.c): number of CPUs.
    pub static mp_ncpus: c_int;
    /// `u_int mp_maxid` (subr_smp.c): highest CPU id.
    pub static mp_maxid: c_uint;
    /// `struct pcpu *cpuid_to_pcpu[MAXCPU]` (subr_pcpu.c): per-CPU areas by id, NULL
    /// for absent CPUs. Indexed only up to `mp_maxid`.
    pub static cpuid_to_pcpu: [*mut Pcpu; 0];
    /// `void smp_rendezvous(void (*setup)(void *), void (*action)(void *),
    /// void (*teardown)(void *), void *arg)`: runs the three phases on every CPU,
    /// with a barrier between them; NULL phases are skipped.
    pub fn smp_rendezvous(
        setup: Option<RendezvousFunc>,
        action: Option<RendezvousFunc>,
        teardown: Option<RendezvousFunc>,
        arg: *mut c_void,
    );
    /// `void ipi_cpu(int cpu, u_int ipi)` (arm64 mp_machdep.c).
    pub fn ipi_cpu(cpu: c_int, ipi: c_uint);
}

#[cfg(test)]
// Test code: a panic here is a failed test (see macro_test.rs).
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// Four fake `struct pcpu` areas with `pc_cpuid` at `off`, and one hole (CPU 2).
    fn areas(off: usize) -> Vec<Option<[u8; 128]>> {
        (0..4u32)
            .map(|id| {
                if id == 2 {
                    return None;
                }
                let mut a = [0xa5u8; 128];
                // Another plausible u_int at the other candidate: the previous field.
                a[off..off + 4].copy_from_slice(&id.to_le_bytes());
                Some(a)
            })
            .collect()
    }

    fn reader(v: &[Option<[u8; 128]>]) -> impl Fn(u32, usize) -> Option<u32> + '_ {
        move |id, off| {
            let a = v.get(id as usize)?.as_ref()?;
            let b: [u8; 4] = a.get(off..off + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b))
        }
    }

    #[test]
    fn finds_the_15_0_layout() {
        let v = areas(52);
        assert_eq!(select_cpuid_offset(3, reader(&v)), Some(52));
    }

    #[test]
    fn finds_the_layout_with_pc_sched() {
        let v = areas(60);
        assert_eq!(select_cpuid_offset(3, reader(&v)), Some(60));
    }

    #[test]
    fn refuses_when_nothing_fits() {
        let v = areas(44);
        assert_eq!(select_cpuid_offset(3, reader(&v)), None);
    }

    #[test]
    fn refuses_when_both_fit_on_a_multiprocessor() {
        let mut v = areas(52);
        for (id, a) in v.iter_mut().enumerate() {
            if let Some(a) = a {
                a[60..64].copy_from_slice(&(id as u32).to_le_bytes());
            }
        }
        assert_eq!(select_cpuid_offset(3, reader(&v)), None);
    }

    #[test]
    fn single_cpu_takes_the_first_candidate() {
        let v = vec![Some([0u8; 128])];
        assert_eq!(select_cpuid_offset(0, reader(&v)), Some(52));
    }

    #[test]
    fn ipi_ast_is_zero() {
        assert_eq!(IPI_AST, 0);
        assert_eq!(PC_CURTHREAD_OFFSET, 0);
    }
}
