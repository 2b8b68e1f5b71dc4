//! A VM's queue of device-register stores waiting for userspace (VM_GET_MMIO_STORES),
//! shared by the kernel core (EL1) and the EL2 code of every vCPU, which queues a store
//! to a register the core told it about without the world switch.
//!
//! The order of the queue is the order its slots were taken, by one atomic update of
//! `state` whoever takes them, so stores of different vCPUs stay in the order the guest
//! made them. Only the core opens the queue, under its lock and after it has set the
//! deadline by which userspace must take what is queued; the EL2 code only adds to an
//! open queue. A store the EL2 code cannot queue (closed, or full) goes to the core.
//! Taking the queue closes it first, so nothing is added behind the taker's back, and
//! waits for each slot taken before that to be written.

use crate::abi::{VmMmioStore, MMIO_STORES_MAX};
use core::sync::atomic::{AtomicU64, Ordering};

/// `state`: the queue accepts stores from the EL2 code.
const OPEN: u64 = 1 << 63;
/// `state`: the number of slots taken.
const COUNT_MASK: u64 = 0xffff;
/// A slot's `word`: the store's size in bits 32..40 (never 0 once written), its value in
/// bits 0..32.
const SIZE_SHIFT: u32 = 32;
/// How long a taker waits for a slot another CPU took and is writing, in polls: the
/// writer runs a few instructions with interrupts masked, so this is never reached
/// unless that CPU stopped.
const WRITE_WAIT_POLLS: u32 = 1 << 24;

/// One queued store.
#[repr(C)]
#[derive(Debug, Default)]
pub struct QueueSlot {
    gpa: AtomicU64,
    /// 0 until written: see [`SIZE_SHIFT`].
    word: AtomicU64,
}

/// The queue, in memory the core allocates per VM and maps for EL2. All zeroes is an
/// empty, closed queue.
#[repr(C)]
#[derive(Debug)]
pub struct MmioStoreQueue {
    state: AtomicU64,
    slots: [QueueSlot; MMIO_STORES_MAX],
}

/// What became of [`MmioStoreQueue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Every slot is taken: userspace must take the queue first.
    Full,
    /// Not open, and the caller may not open it (the EL2 code): the core must queue.
    Closed,
}

impl Default for MmioStoreQueue {
    fn default() -> Self {
        MmioStoreQueue {
            state: AtomicU64::new(0),
            slots: core::array::from_fn(|_| QueueSlot::default()),
        }
    }
}

impl MmioStoreQueue {
    /// Whether stores are queued (the queue opens with its first store).
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) & OPEN != 0
    }

    /// Queues a store of `size` bytes (1, 2 or 4) of `value`'s low bytes at `gpa`.
    /// `may_open`: the caller is the core, holding the lock every opener and taker
    /// holds, with the deadline for the queue already set; a closed queue is then
    /// opened with this store.
    pub fn push(&self, gpa: u64, size: u8, value: u64, may_open: bool) -> Push {
        let max = MMIO_STORES_MAX as u64;
        let mut state = self.state.load(Ordering::Acquire);
        let index = loop {
            if state & OPEN == 0 {
                if !may_open {
                    return Push::Closed;
                }
                // Under the opener's lock a closed queue is empty (taking it empties
                // it under the same lock) and no one else writes `state`.
                self.write_slot(0, gpa, size, value);
                self.state.store(OPEN | 1, Ordering::Release);
                return Push::Queued;
            }
            let count = state & COUNT_MASK;
            if count >= max {
                return Push::Full;
            }
            match self.state.compare_exchange_weak(
                state,
                state.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break count,
                Err(now) => state = now,
            }
        };
        // index < MMIO_STORES_MAX, checked above.
        self.write_slot(index as usize, gpa, size, value);
        Push::Queued
    }

    fn write_slot(&self, index: usize, gpa: u64, size: u8, value: u64) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let mask: u64 = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        slot.gpa.store(gpa, Ordering::Relaxed);
        let word = (u64::from(size) << SIZE_SHIFT) | (value & mask);
        slot.word.store(word, Ordering::Release);
    }

    /// Closes the queue and hands every store in it to `each`, oldest first, leaving it
    /// empty. Called by the core under the lock [`push`](Self::push)'s openers hold.
    /// Returns how many slots were lost because their writer never finished (none
    /// unless a CPU stopped in the middle of a store).
    pub fn take(&self, mut each: impl FnMut(VmMmioStore)) -> u32 {
        let count = self.state.swap(0, Ordering::AcqRel) & COUNT_MASK;
        let mut lost = 0u32;
        for slot in self.slots.iter().take(count as usize) {
            let mut polls = 0u32;
            let word = loop {
                let w = slot.word.load(Ordering::Acquire);
                if w != 0 || polls >= WRITE_WAIT_POLLS {
                    break w;
                }
                polls = polls.saturating_add(1);
                core::hint::spin_loop();
            };
            if word == 0 {
                lost = lost.saturating_add(1);
                continue;
            }
            slot.word.store(0, Ordering::Relaxed);
            each(VmMmioStore {
                gpa: slot.gpa.load(Ordering::Relaxed),
                // The low 32 bits by construction.
                value: (word & 0xffff_ffff) as u32,
                size: ((word >> SIZE_SHIFT) & 0xff) as u8,
                _pad: [0; 3],
            });
        }
        lost
    }
}
