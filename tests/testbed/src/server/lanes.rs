//! Lanes (docs/testbed.md, "Lanes"): the shared-memory fast path of a vCPU's requests.
//! A lane is a few pages of testbed RAM ([`wire::lane`]) a client maps through the RAM
//! file; it posts a request there and a run CPU, while it serves lanes, takes it
//! without the virtio console, the broker or CPU 0, executes it and writes the answer
//! back, which the client is spinning for. So a vCPU's exit to userspace and its next
//! VM_RUN cost two writes to shared memory instead of two trips through the channel.
//!
//! Serving is a job on a run CPU like a VM_RUN ([`serve`]): started by a client's
//! `TESTBED_LANE_KICK` when no job was free (CPU 0 queues it), it executes whatever the
//! lanes hold, round-robin (a job claims a lane's request, so another job on the other
//! run CPU serves the other lanes meanwhile), and between requests spins for
//! [`SPIN_US`] while no other run CPU is in a run, then waits in short WFIs (a tick
//! timer), so an idle lane costs the host next to nothing; it ends after
//! [`POLL_WINDOW_US`] without a request ([`BUSY_WINDOW_US`] while another run CPU is in
//! a run), or at once when a queued run waits for the CPU.
//! A client whose answer is slow to come stops spinning and sends `TESTBED_LANE_WAIT`,
//! which CPU 0 answers when the response is in the lane (the run CPU sends it an SGI).
//!
//! Only a vCPU's own requests, and the interrupt lines its thread drives between runs,
//! travel in its lane ([`lane::CMDS`], on the lane's VM): a VM_RUN and a register get
//! or set in fixed places (each word read once; the exit written where the client
//! reads it), anything else as a message, copied out of shared memory before it is
//! parsed, every length bounded.

use super::{errno_of, other_runs, run_one, run_started, Core, Window, RUNS_WAITING};
use crate::kernel::mm::{self, MAX_CPUS, PAGE};
use crate::kernel::{cpu, gic, timer};
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use vmm_core::sync::SpinLock;
use vmm_core::{Errno, Host, KResult};
use vmm_sys::abi::{Pod, VmExit, VmRegister, VmRun, CPUSET_SIZE};
use vmm_sys::exit::ExitCode;
use vmm_sys::ioctl;
use vmm_sys::wire::{self, lane, WireRequest, MAX_BUFFERS};

/// How long the serving job waits for a next request before it ends.
const POLL_WINDOW_US: u64 = 2000;
/// The same while another run CPU is in a run: QEMU's threads then outnumber the host's
/// cores, each tick is a thread wakeup that waits for a core (10 µs ticks took ~60 µs),
/// and a job that ends soon and is started again by the next kick costs less.
const BUSY_WINDOW_US: u64 = 250;
/// How long after a request the waiting job spins for the next one before it sleeps.
const SPIN_US: u64 = 200;
/// How often the waiting job looks at the lanes.
const TICK_US: u64 = 10;
/// Lanes over all VMs (the pool; 16 vCPUs each for a few VMs, more than the testbed
/// runs at once).
const MAX_LANES: usize = 64;
const LANE_PAGES: usize = lane::SIZE / PAGE as usize;

/// A slot of the lane pool. The pool's pages are taken at start and never given back:
/// a client may still write to a lane after its VM is gone (another process destroyed
/// it), and that must land in lane memory, never in another VM's; and the page
/// allocator's free count, which tests compare for leaks, does not move with lanes.
struct Lane {
    pa: u64,
    va: u64,
    /// (VM, vCPU, client token) while the slot is in use.
    owner: Option<(Vec<u8>, u64, u64)>,
}

impl Lane {
    fn live(&self) -> bool {
        self.owner.is_some()
    }
}

static LANES: vmm_core::sync::SpinLock<Vec<Lane>> = vmm_core::sync::SpinLock::new_spin(Vec::new());
/// Bit `i`: slot `i` of the pool is in use. Kept beside the pool (changed under its
/// lock) so that the serving job's idle checks, every tick, take no lock and allocate
/// nothing: under `-icount` each instruction of a tick counts as guest time.
static LIVE: AtomicU64 = AtomicU64::new(0);
/// Slot `i`'s direct-map address, fixed at start.
static SLOT_VA: [AtomicU64; MAX_LANES] = [const { AtomicU64::new(0) }; MAX_LANES];
/// The vCPU number of slot `i`'s owner (set before the slot is live).
static SLOT_VCPU: [AtomicU64; MAX_LANES] = [const { AtomicU64::new(0) }; MAX_LANES];
/// Room for a VM name in whole words.
const NAME_WORDS: usize = vmm_sys::VM_MAX_NAMELEN.div_ceil(8);
/// Slot `i`'s owner's VM name (bytes in words, and its length), so that a job reads it
/// without the pool's lock; written at open under a sequence count ([`SLOT_NAME_SEQ`],
/// odd while it is written) that a reader checks around its read.
static SLOT_NAME: [[AtomicU64; NAME_WORDS]; MAX_LANES] =
    [const { [const { AtomicU64::new(0) }; NAME_WORDS] }; MAX_LANES];
static SLOT_NAME_LEN: [AtomicUsize; MAX_LANES] = [const { AtomicUsize::new(0) }; MAX_LANES];
static SLOT_NAME_SEQ: [AtomicU64; MAX_LANES] = [const { AtomicU64::new(0) }; MAX_LANES];

fn set_slot_name(i: usize, name: &[u8]) {
    let (Some(words), Some(len), Some(seq)) =
        (SLOT_NAME.get(i), SLOT_NAME_LEN.get(i), SLOT_NAME_SEQ.get(i))
    else {
        return;
    };
    seq.fetch_add(1, Ordering::SeqCst);
    for (w, chunk) in words.iter().zip(name.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::SeqCst);
    }
    len.store(name.len().min(NAME_WORDS * 8), Ordering::SeqCst);
    seq.fetch_add(1, Ordering::SeqCst);
}

/// A lane's VM name as a job last read it: a job serving the same lane reads the slot's
/// copy again only when the slot was opened anew (its sequence count moved).
struct LaneName {
    slot: usize,
    seq: u64,
    len: usize,
    buf: [u8; NAME_WORDS * 8],
}

impl LaneName {
    const NONE: LaneName = LaneName {
        slot: usize::MAX,
        seq: 0,
        len: 0,
        buf: [0; NAME_WORDS * 8],
    };

    /// Slot `i`'s owner's VM name; `None` if it was being written.
    fn of(&mut self, i: usize) -> Option<&[u8]> {
        let (words, len, seq) = (
            SLOT_NAME.get(i)?,
            SLOT_NAME_LEN.get(i)?,
            SLOT_NAME_SEQ.get(i)?,
        );
        let before = seq.load(Ordering::SeqCst);
        if self.slot != i || self.seq != before {
            self.slot = usize::MAX;
            let n = len.load(Ordering::SeqCst).min(NAME_WORDS * 8);
            for (w, chunk) in words.iter().zip(self.buf.chunks_mut(8)).take(n.div_ceil(8)) {
                chunk.copy_from_slice(&w.load(Ordering::SeqCst).to_le_bytes());
            }
            if before % 2 != 0 || seq.load(Ordering::SeqCst) != before {
                return None;
            }
            (self.slot, self.seq, self.len) = (i, before, n);
        }
        self.buf.get(..self.len).filter(|n| !n.is_empty())
    }
}
const _: () = assert!(MAX_LANES <= 64);

/// Takes the pool's pages (at server start). `false` if memory ran out.
pub fn init() -> bool {
    let mut l = LANES.lock();
    for slot in &SLOT_VA {
        let Some(pa) = mm::alloc_pages(LANE_PAGES) else {
            return false;
        };
        slot.store(mm::pa_to_va(pa), Ordering::Release);
        l.push(Lane {
            pa,
            va: mm::pa_to_va(pa),
            owner: None,
        });
    }
    true
}
/// Slots whose request a lane job is executing (bit `i`: slot `i`).
static CLAIMED: AtomicU64 = AtomicU64::new(0);
/// Lane jobs queued or free to take a request (polling); CPU 0 queues one only when
/// there is none.
static FREE_JOBS: AtomicUsize = AtomicUsize::new(0);
/// What the lanes' `SERVING` words say: whether a lane job is free to take requests.
static SERVING_NOW: vmm_core::sync::SpinLock<bool> = vmm_core::sync::SpinLock::new_spin(false);
/// Waits (`TESTBED_LANE_WAIT`) for lanes no job is executing: like queued runs, they
/// make a long VM_RUN give its run CPU up at its slice's end.
pub static OTHER_WAITS: AtomicUsize = AtomicUsize::new(0);

/// Word `off` of the lane at `va` (a direct-map address of lane memory, which stays
/// allocated while anyone can reach it: see `destroyed`).
fn word(va: u64, off: usize) -> &'static AtomicU32 {
    // SAFETY: `va + off` is a 4-byte aligned word inside a live lane's pages (the
    // offsets are the layout's, all below lane::SIZE); the client writes it through the
    // RAM file, so it is only ever accessed atomically.
    unsafe { &*((va + off as u64) as *const AtomicU32) }
}

/// The u64 lane `va` keeps in the two words at `off` (low word first).
fn load_u64(va: u64, off: usize) -> u64 {
    u64::from(word(va, off).load(Ordering::Acquire))
        | u64::from(word(va, off + 4).load(Ordering::Acquire)) << 32
}

/// Writes `v` into the two words at `off` of lane `va` (low word first).
fn store_u64(va: u64, off: usize, v: u64) {
    word(va, off).store(v as u32, Ordering::Relaxed);
    word(va, off + 4).store((v >> 32) as u32, Ordering::Relaxed);
}

/// `TESTBED_LANE_OPEN`: client `token`'s lane of vCPU `vcpu` of VM `name`, taken from
/// the pool on first use, its words reset.
pub fn open(name: &[u8], vcpu: u64, token: u64) -> KResult<u64> {
    if vcpu >= vmm_core::vgic::MAX_CPUS as u64 {
        return Err(Errno::EINVAL);
    }
    let mut l = LANES.lock();
    let mine = |x: &&mut Lane| x.owner.as_ref() == Some(&(name.to_vec(), vcpu, token));
    if let Some(x) = l.iter_mut().find(mine) {
        return Ok(x.pa);
    }
    // Not a slot whose old request a job is still executing (its VM destroyed under
    // it): that job's answer must not land in the new owner's lane.
    let claimed = CLAIMED.load(Ordering::SeqCst);
    let (i, x) = l
        .iter_mut()
        .enumerate()
        .find(|(i, x)| !x.live() && claimed & (1 << i) == 0)
        .ok_or(Errno::ENOSPC)?;
    // REG_GEN is not reset: a hint its previous owner's client holds must not match.
    for off in [
        lane::REQ_SEQ,
        lane::RESP_SEQ,
        lane::CLIENT_WAITING,
        lane::REQ_LEN,
        lane::RESP_LEN,
        lane::HINT_SEQ,
    ] {
        word(x.va, off).store(0, Ordering::SeqCst);
    }
    // Under the lock that publishes SERVING, so no change is missed.
    let serving = SERVING_NOW.lock();
    word(x.va, lane::SERVING).store(u32::from(*serving), Ordering::SeqCst);
    x.owner = Some((name.to_vec(), vcpu, token));
    if let Some(c) = SLOT_VCPU.get(i) {
        c.store(vcpu, Ordering::SeqCst);
    }
    set_slot_name(i, name);
    RAN.fetch_and(!(1 << i), Ordering::SeqCst);
    LIVE.fetch_or(1 << i, Ordering::SeqCst);
    drop(serving);
    Ok(x.pa)
}

/// VM `name` was destroyed: its lanes go back to the pool, their register hints void.
pub fn destroyed(name: &[u8]) {
    for (i, x) in LANES.lock().iter_mut().enumerate() {
        if x.owner.as_ref().is_some_and(|(v, _, _)| v == name) {
            word(x.va, lane::REG_GEN).fetch_add(1, Ordering::SeqCst);
            x.owner = None;
            LIVE.fetch_and(!(1 << i), Ordering::SeqCst);
        }
    }
}

/// Whether lane `va` holds a request not yet answered.
fn pending(va: u64) -> bool {
    word(va, lane::REQ_SEQ).load(Ordering::Acquire)
        != word(va, lane::RESP_SEQ).load(Ordering::Acquire)
}

/// The direct-map addresses of the lanes in use, by slot (the mask's set bits, one
/// step each: the waiting job looks at them every tick).
fn live() -> impl Iterator<Item = (usize, u64)> {
    let mut mask = LIVE.load(Ordering::SeqCst);
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some((i, SLOT_VA.get(i)?.load(Ordering::Relaxed)))
    })
}

/// Whether a live lane holds a request no job has taken.
fn waiting() -> bool {
    let claimed = CLAIMED.load(Ordering::SeqCst);
    live().any(|(i, va)| claimed & (1 << i) == 0 && pending(va))
}

/// Whether a lane holds a request no job has taken and no job is free to take: its
/// client waits for a run CPU.
pub fn unserved() -> bool {
    FREE_JOBS.load(Ordering::SeqCst) == 0 && waiting()
}

/// Whether a job is executing the request of the lane at `pa`.
pub fn claimed(pa: u64) -> bool {
    let claimed = CLAIMED.load(Ordering::SeqCst);
    live().any(|(i, va)| claimed & (1 << i) != 0 && mm::va_to_pa(va) == pa)
}

/// CPU 0, about to queue a lane job: counts it as free, unless one is already.
pub fn job_queued() -> bool {
    FREE_JOBS
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// A lane job stops (`-1`) or starts (`+1`) being free to take requests; the lanes'
/// `SERVING` words then say whether any is. Published under a lock, by whoever changed
/// the count last, so the words end up saying what the count does.
fn free_jobs_change(up: bool) {
    if up {
        FREE_JOBS.fetch_add(1, Ordering::SeqCst);
    } else {
        FREE_JOBS.fetch_sub(1, Ordering::SeqCst);
    }
    publish_serving();
}

/// Sets every lane's `SERVING` word to whether a lane job is free.
fn publish_serving() {
    let mut serving = SERVING_NOW.lock();
    *serving = FREE_JOBS.load(Ordering::SeqCst) > 0;
    for (_, va) in live() {
        word(va, lane::SERVING).store(u32::from(*serving), Ordering::SeqCst);
    }
}

/// A lane job on a run CPU: serves the lanes until none has had a request for
/// [`POLL_WINDOW_US`] ([`BUSY_WINDOW_US`]) or a queued run waits. CPU 0 counted it free
/// when it queued it.
pub fn serve(core: &'static Core) {
    publish_serving();
    let window = timer::freq() / 1_000_000 * POLL_WINDOW_US;
    let busy_window = timer::freq() / 1_000_000 * BUSY_WINDOW_US;
    let tick = (timer::freq() / 1_000_000 * TICK_US).max(1);
    let spin = timer::freq() / 1_000_000 * SPIN_US;
    let mut last = timer::now();
    let mut next = 0usize;
    let mut names = LaneName::NONE;
    loop {
        // Round-robin from the slot after the last one served; a request another job
        // took is skipped.
        let claimed = CLAIMED.load(Ordering::SeqCst);
        let found = live()
            .filter(|&(i, va)| claimed & (1 << i) == 0 && pending(va))
            .min_by_key(|&(i, _)| (i + MAX_LANES - next) % MAX_LANES);
        if let Some((i, va)) = found {
            if CLAIMED.fetch_or(1 << i, Ordering::SeqCst) & (1 << i) != 0 {
                continue;
            }
            // Busy in a request (maybe a long VM_RUN): another job serves the others.
            free_jobs_change(false);
            // Free again before the answer is out: a client answered at once posts its
            // next request and, finding SERVING still 0, would kick through the
            // broker. The claim lasts until the answer is written (until then the
            // request still looks pending).
            execute_lane(core, (i, va), &mut names, || free_jobs_change(true));
            CLAIMED.fetch_and(!(1 << i), Ordering::SeqCst);
            next = (i + 1) % MAX_LANES;
            last = timer::now();
            continue;
        }
        let waited = timer::now().saturating_sub(last);
        let idle = waited > window || (waited > busy_window && other_runs());
        if idle || RUNS_WAITING.load(Ordering::Acquire) > 0 {
            // Clients that post from now on kick if no job is left free; one that
            // posted before saw SERVING still set, so look once more after that.
            free_jobs_change(false);
            fence(Ordering::SeqCst);
            if FREE_JOBS.load(Ordering::SeqCst) == 0 && waiting() {
                free_jobs_change(true);
                continue;
            }
            return;
        }
        // Spinning takes a host core from QEMU: only while no other run CPU needs one.
        if timer::now().saturating_sub(last) < spin && !other_runs() {
            core::hint::spin_loop();
            continue;
        }
        // The plain testbed sleep: the server's would end at once while clients wait
        // for these very lanes.
        let until = timer::now().saturating_add(tick);
        let _ = core.host().0.sleep(0, Some(until), &|| {
            !waiting() && RUNS_WAITING.load(Ordering::Acquire) == 0
        });
    }
}

/// Room for the argument of a lane request (the largest of [`lane::CMDS`]'s: the
/// stores VM_GET_MMIO_STORES answers, 2 KiB).
const LANE_ARG_MAX: usize = 2056;
const _: () = {
    let mut i = 0;
    while i < lane::CMDS.len() {
        assert!(vmm_sys::ioctl::iocparm_len(lane::CMDS[i]) <= LANE_ARG_MAX);
        i += 1;
    }
};

/// Lane requests answered, by command ([`lane::CMDS`] order), and the counter ticks they
/// took from the job's first look to the answer written (`TESTBED_LANE_STATS`). A
/// lane's first VM_RUN is left out: it carries the vCPU's one-time work (the cache
/// maintenance of all of a new VM's memory, ~15 ms for 64 MiB), not an exit's.
static ANSWERED: [AtomicU64; lane::CMDS.len()] = [const { AtomicU64::new(0) }; lane::CMDS.len()];
static ANSWER_TICKS: [AtomicU64; lane::CMDS.len()] =
    [const { AtomicU64::new(0) }; lane::CMDS.len()];
/// Bit `i`: lane slot `i` has had its first VM_RUN since it was opened.
static RAN: AtomicU64 = AtomicU64::new(0);

/// `TESTBED_LANE_STATS`: `{ u64 count; u64 ns }` per command into `out`.
pub fn stats(out: &mut [u8]) -> KResult<()> {
    let out = out.get_mut(..16 * lane::CMDS.len()).ok_or(Errno::EINVAL)?;
    let freq = u128::from(timer::freq().max(1));
    for (i, pair) in out.chunks_exact_mut(16).enumerate() {
        let ticks = u128::from(ANSWER_TICKS[i].load(Ordering::Relaxed));
        let ns = u64::try_from(ticks * 1_000_000_000 / freq).unwrap_or(u64::MAX);
        pair[..8].copy_from_slice(&ANSWERED[i].load(Ordering::Relaxed).to_le_bytes());
        pair[8..].copy_from_slice(&ns.to_le_bytes());
    }
    Ok(())
}

/// Each run CPU's private copy of the request it executes (one lane job per CPU at a
/// time; a static buffer, so that a request costs no allocation).
static REQUEST_COPY: [SpinLock<[u8; lane::REQ_MAX]>; MAX_CPUS] =
    [const { SpinLock::new_spin([0; lane::REQ_MAX]) }; MAX_CPUS];

/// Executes the request in lane slot `slot` (at `va`), calls `before_answer`, and
/// publishes the answer, which is built in the lane's response area: the core's
/// copyout writes the out buffers straight to where the answer carries them.
fn execute_lane(
    core: &'static Core,
    (slot, va): (usize, u64),
    names: &mut LaneName,
    before_answer: impl FnOnce(),
) {
    let start = timer::now();
    let seq = word(va, lane::REQ_SEQ).load(Ordering::Acquire);
    let lane_vm = names.of(slot);
    let (cmd, answer_len) = match word(va, lane::REQ_KIND).load(Ordering::Acquire) {
        lane::KIND_RUN => {
            run_in_lane(core, (slot, va, seq), lane_vm);
            (Some(ioctl::VM_RUN), 0)
        }
        kind @ (lane::KIND_GET_REGISTER | lane::KIND_SET_REGISTER) => {
            let set = kind == lane::KIND_SET_REGISTER;
            (Some(register_in_lane(core, (slot, va), lane_vm, set)), 0)
        }
        _ => message_in_lane(core, (slot, va, seq), lane_vm),
    };
    before_answer();
    word(va, lane::RESP_LEN).store(answer_len as u32, Ordering::Release);
    word(va, lane::RESP_SEQ).store(seq, Ordering::SeqCst);
    // A lane's first VM_RUN is left out of the statistics (see ANSWERED).
    let first_run =
        cmd == Some(ioctl::VM_RUN) && RAN.fetch_or(1 << slot, Ordering::Relaxed) & (1 << slot) == 0;
    if let Some(i) = cmd
        .filter(|_| !first_run)
        .and_then(|c| lane::CMDS.iter().position(|&x| x == c))
    {
        ANSWERED[i].fetch_add(1, Ordering::Relaxed);
        ANSWER_TICKS[i].fetch_add(timer::now().saturating_sub(start), Ordering::Relaxed);
    }
    if word(va, lane::CLIENT_WAITING).load(Ordering::SeqCst) != 0 {
        gic::send_sgi(0, gic::SGI_WAKE);
    }
}

/// A [`lane::KIND_RUN`] request of lane slot `slot` (at `va`, sequence number `seq`) on
/// its VM `vm`: the core's copyout writes the exit and the vCPU set straight to their
/// places in the lane; the errno goes to [`lane::ERRNO`].
fn run_in_lane(core: &Core, (slot, va, seq): (usize, u64, u32), vm: Option<&[u8]>) {
    let cpuid = word(va, lane::CPUID).load(Ordering::Acquire) as i32;
    let errno = match vm {
        Some(vm) => {
            let call = super::Call {
                vm: Some(vm),
                cmd: ioctl::VM_RUN,
            };
            let (exit_at, cpuset_at) = (va + lane::RUN_EXIT as u64, va + lane::RUN_CPUSET as u64);
            let windows = [
                Window {
                    ptr_offset: offset_of!(VmRun, cpuset),
                    addr: cpuset_at,
                    len: CPUSET_SIZE as u64,
                },
                Window {
                    ptr_offset: offset_of!(VmRun, vm_exit),
                    addr: exit_at,
                    len: size_of::<VmExit>() as u64,
                },
            ];
            let mut arg = [0u8; size_of::<VmRun>()];
            arg.copy_from_slice(
                VmRun {
                    cpuid,
                    cpusetsize: CPUSET_SIZE as u64,
                    ..Default::default()
                }
                .as_bytes(),
            );
            run_started(true);
            let r = with_hint_target(va, seq, || {
                run_one(core, call, &mut arg, &windows, Some(slot))
            });
            run_started(false);
            errno_of(core, call, r)
        }
        None => Errno::EINVAL.0,
    };
    word(va, lane::ERRNO).store(errno as u32, Ordering::Release);
}

/// A [`lane::KIND_GET_REGISTER`] (or, `set`, [`lane::KIND_SET_REGISTER`]) request of
/// lane slot `slot` (at `va`) on its VM `vm`: the register's value read from or written
/// to its fixed place, the errno to [`lane::ERRNO`]. Returns the command it was.
fn register_in_lane(core: &Core, (slot, va): (usize, u64), vm: Option<&[u8]>, set: bool) -> u64 {
    let cmd = if set {
        ioctl::VM_SET_REGISTER
    } else {
        ioctl::VM_GET_REGISTER
    };
    let r = VmRegister {
        cpuid: word(va, lane::CPUID).load(Ordering::Acquire) as i32,
        regnum: word(va, lane::REG_NUM).load(Ordering::Acquire) as i32,
        regval: if set {
            load_u64(va, lane::REG_VALUE)
        } else {
            0
        },
    };
    let errno = match vm {
        Some(vm) => {
            let call = super::Call { vm: Some(vm), cmd };
            let mut arg = [0u8; size_of::<VmRegister>()];
            arg.copy_from_slice(r.as_bytes());
            let result = run_one(core, call, &mut arg, &[], Some(slot));
            if result.is_ok() && !set {
                let v = VmRegister::from_bytes(&arg).map_or(0, |r| r.regval);
                store_u64(va, lane::REG_RESULT, v);
            }
            errno_of(core, call, result)
        }
        None => Errno::EINVAL.0,
    };
    word(va, lane::ERRNO).store(errno as u32, Ordering::Release);
    cmd
}

/// A [`lane::KIND_MESSAGE`] request of lane slot `slot` (at `va`, sequence number
/// `seq`) on its VM `vm`: the message copied out of the lane, parsed, executed, and
/// its answer written in the response area. Returns its command (if it was one of the
/// lane's) and the answer's length.
fn message_in_lane(
    core: &Core,
    (slot, va, seq): (usize, u64, u32),
    vm: Option<&[u8]>,
) -> (Option<u64>, usize) {
    let len = (word(va, lane::REQ_LEN).load(Ordering::Acquire) as usize).min(lane::REQ_MAX);
    let resp = va + lane::RESP as u64;
    let mut copy = REQUEST_COPY[cpu::id() % MAX_CPUS].lock();
    let msg = &mut copy[..len];
    // SAFETY: the request area lies inside the lane's pages; the copy is what is parsed,
    // whatever the client writes there meanwhile.
    unsafe {
        core::ptr::copy_nonoverlapping((va + lane::REQ as u64) as *const u8, msg.as_mut_ptr(), len)
    };
    // The name is compared with the lane's own (validated when the lane was opened).
    match wire::parse_request_for_known_vm(msg) {
        Ok(req) if lane::CMDS.contains(&req.cmd) && req.vm.is_some() && req.vm == vm => {
            run_started(true);
            let n = answer_in_lane(core, &req, (slot, va, seq));
            run_started(false);
            (Some(req.cmd), n)
        }
        Ok(req) => (None, error_in_lane(req.cmd, resp)),
        Err(_) => (None, error_in_lane(0, resp)),
    }
}

/// Writes `bytes` at `off` of the response area at `resp`.
fn put(resp: u64, off: usize, bytes: &[u8]) {
    // SAFETY: callers stay within lane::RESP_MAX of the response area, inside the lane's
    // pages (`answer_in_lane` checks the answer's whole layout first).
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), (resp + off as u64) as *mut u8, bytes.len())
    };
}

/// An EINVAL answer to `cmd` at `resp`; its length.
fn error_in_lane(cmd: u64, resp: u64) -> usize {
    wire::write_response_around_data(cmd, Errno::EINVAL.0, &[], &[], &mut |o, b| put(resp, o, b))
}

/// Executes `req` with its out buffers placed where its answer carries them in the
/// response area at `resp` (zeroed first, as the broker's path hands the core zeroed
/// buffers), its in buffers read from the request's private copy, and writes the rest
/// of the answer around them; returns the answer's length.
fn answer_in_lane(core: &Core, req: &WireRequest<'_>, (slot, va, seq): (usize, u64, u32)) -> usize {
    let resp = va + lane::RESP as u64;
    let mut lens = [0usize; MAX_BUFFERS];
    let mut nout = 0;
    for b in req.buffers().filter(|b| b.dir.is_out()) {
        lens[nout] = b.len;
        nout += 1;
    }
    let lens = &lens[..nout];
    let (at, total) = wire::response_layout(req.cmd, req.arg.len(), lens);
    if total > lane::RESP_MAX || req.arg.len() > LANE_ARG_MAX {
        return error_in_lane(req.cmd, resp);
    }
    let mut arg_buf = [0u8; LANE_ARG_MAX];
    let arg = &mut arg_buf[..req.arg.len()];
    arg.copy_from_slice(req.arg);
    let mut windows = [Window::NONE; MAX_BUFFERS];
    let mut nbuf = 0;
    let mut out = at.iter();
    for (b, w) in req.buffers().zip(windows.iter_mut()) {
        let addr = if b.dir.is_out() {
            let a = resp + *out.next().unwrap_or(&0) as u64;
            // SAFETY: inside the response area: the layout's total was checked above.
            unsafe { core::ptr::write_bytes(a as *mut u8, 0, b.len) };
            if let Some(d) = b.data {
                put(resp, a as usize - resp as usize, d);
            }
            a
        } else {
            b.data.map_or(0, |d| d.as_ptr() as u64)
        };
        *w = Window {
            ptr_offset: b.ptr_offset,
            addr,
            len: b.len as u64,
        };
        nbuf += 1;
    }
    let r = with_hint_target(va, seq, || {
        run_one(core, req.into(), arg, &windows[..nbuf], Some(slot))
    });
    let errno = errno_of(core, req.into(), r);
    wire::write_response_around_data(req.cmd, errno, arg, lens, &mut |o, b| put(resp, o, b))
}

/// A request `cmd` (argument `arg`) on a VM, before it is answered: bumps the register
/// generation ([`lane::REG_GEN`]) of the lanes whose vCPU's registers it may change: a
/// vCPU's own request (its number starts the argument: [`lane::names_vcpu`]) that
/// vCPU's, except in the lane that carried its VM_RUN (`carrier`), whose hint is taken
/// after the run; anything else but the testbed's own requests any of them. Register
/// reads, interrupt lines and taking queued device stores change nothing. Lanes of
/// other VMs with the same vCPU number are bumped too: a hint lost, never a stale one
/// kept, and no lock or name compared.
pub fn registers_may_change(cmd: u64, arg: &[u8], carrier: Option<usize>) {
    if matches!(
        cmd,
        ioctl::VM_GET_REGISTER
            | ioctl::VM_GET_REGISTER_SET
            | ioctl::VM_ASSERT_IRQ
            | ioctl::VM_DEASSERT_IRQ
            | ioctl::VM_GET_MMIO_STORES
    ) || ioctl::ioc_group(cmd) == b't'
    {
        return;
    }
    let (vcpu, except) = match arg.get(..4) {
        Some(&[a, b, c, d]) if lane::names_vcpu(cmd) => (
            Some(i32::from_le_bytes([a, b, c, d])),
            carrier.filter(|_| cmd == ioctl::VM_RUN),
        ),
        _ => (None, None),
    };
    for (i, va) in live() {
        let c = SLOT_VCPU.get(i).map(|c| c.load(Ordering::SeqCst));
        let same_vcpu = vcpu.is_none_or(|n| u64::try_from(n).ok() == c);
        if Some(i) != except && same_vcpu {
            word(va, lane::REG_GEN).fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The lane (its address) and sequence number of the VM_RUN each CPU executes, for the
/// register hint ([`exit_to_user`]); 0: none.
static HINT_TARGET: [(AtomicU64, AtomicU32); MAX_CPUS] =
    [const { (AtomicU64::new(0), AtomicU32::new(0)) }; MAX_CPUS];

/// Runs `run` (a VM_RUN of lane `va`, sequence number `seq`) with this CPU's hint target
/// set to that lane.
fn with_hint_target<T>(va: u64, seq: u32, run: impl FnOnce() -> T) -> T {
    let Some(t) = HINT_TARGET.get(cpu::id()) else {
        return run();
    };
    t.1.store(seq, Ordering::Relaxed);
    t.0.store(va, Ordering::Relaxed);
    let r = run();
    t.0.store(0, Ordering::Relaxed);
    r
}

/// `Host::exit_to_user` on this CPU: if it executes a lane's VM_RUN whose exit is a
/// store for userspace to emulate, the stored register's value (from `x`, the vCPU's
/// registers as userspace will read them) as the hint userspace may read it from
/// ([`lane::HINT_SEQ`]), so that its VM_GET_REGISTER needs no request of its own. The
/// core holds the vCPU meanwhile: no write to its registers can land in between, and
/// one that landed before bumped the generation read here.
pub fn exit_to_user(exit: &VmExit, x: &[u64; 31]) {
    let Some(t) = HINT_TARGET.get(cpu::id()) else {
        return;
    };
    let va = t.0.load(Ordering::Relaxed);
    if va == 0 || exit.exitcode != ExitCode::InstEmul as i32 {
        return;
    }
    // SAFETY: `inst_emul` is the member an INST_EMUL exit carries; every bit pattern
    // of it is valid.
    let vie = unsafe { exit.u.inst_emul.vie };
    let Some((reg, &value)) = usize::try_from(vie.reg)
        .ok()
        .and_then(|r| Some((r, x.get(r)?)))
    else {
        return;
    };
    if !vie.is_write() {
        return;
    }
    word(va, lane::HINT_REG).store(reg as u32, Ordering::Relaxed);
    let gen = word(va, lane::REG_GEN).load(Ordering::SeqCst);
    word(va, lane::HINT_GEN).store(gen, Ordering::Relaxed);
    store_u64(va, lane::HINT_VALUE, value);
    word(va, lane::HINT_SEQ).store(t.1.load(Ordering::Relaxed), Ordering::Release);
}

/// `TESTBED_LANE_WAIT` (CPU 0): whether the wait for `seq` on client `token`'s lane of
/// vCPU `vcpu` of VM `name` can be answered now (`Ok(errno)`; ENOENT: no such lane);
/// `Err`: not yet (the lane's PA, for the waiting list).
pub fn wait_done(name: &[u8], vcpu: u64, token: u64, seq: u32) -> Result<i32, u64> {
    let l = LANES.lock();
    let owner = (name.to_vec(), vcpu, token);
    let Some(x) = l.iter().find(|x| x.owner.as_ref() == Some(&owner)) else {
        return Ok(Errno::ENOENT.0);
    };
    if word(x.va, lane::RESP_SEQ).load(Ordering::SeqCst) == seq {
        return Ok(0);
    }
    Err(x.pa)
}

/// For CPU 0's list of waits: whether the wait for `seq` on the lane at `pa` is over
/// (`Some(errno)`: answered, or the lane is gone without the answer: it goes back to
/// the pool only with its VM, so the client hears that the VM does not exist, as on
/// the broker's path). The answer counts even when the VM has gone since (a destroy
/// ends the run with SUSPENDED, written there before the lane went back to the pool).
pub fn wait_over(pa: u64, seq: u32) -> Option<i32> {
    let l = LANES.lock();
    let x = l.iter().find(|x| x.pa == pa)?;
    if word(x.va, lane::RESP_SEQ).load(Ordering::SeqCst) == seq {
        Some(0)
    } else if !x.live() {
        Some(wire::ERR_NO_SUCH_VM)
    } else {
        None
    }
}
