//! Device registers the kernel handles for userspace (VM_SET_MMIO_SHORTCUT and
//! VM_GET_MMIO_STORES, our extension), so that a console's bytes do not each cost
//! exits: a register whose loads the kernel answers from a value the device model
//! publishes (a UART's flag register, read before every byte), and one whose stores it
//! queues for userspace to take in order (the UART's data register), and one that does
//! both, holding what the guest last stored (the UART's control register). While stores are
//! queued, every exit to userspace goes after a BOGUS one, at which the VMM takes them
//! (`run.rs`), so it never sees an exit before a store the guest made earlier.
//!
//! The stores wait in the VM's [`MmioStoreQueue`], which the EL2 code adds a queued
//! register's stores to while it is open (the core opens it with the first store, after
//! setting the deadline by which userspace must take it). Openers and takers hold the
//! VM's `mmio` lock, which `&mut MmioShortcuts` stands for here.

use crate::errno::{Errno, KResult};
use core::mem::{offset_of, size_of};
use vmm_sys::abi::{Pod, VmMmioStore, VmMmioStores};
use vmm_sys::hyp::{El2Answers, El2MmioAnswer};
use vmm_sys::mmio_queue::{MmioStoreQueue, Push};

/// How long a queued store may wait for userspace: a vCPU still running then is kicked
/// out (a BOGUS exit), so a guest that prints and then spins without exits is seen.
pub const QUEUE_LATENCY_MS: u64 = 1;

/// Registers one VM may have handled at once.
pub const MAX_SHORTCUTS: usize = 16;

/// What the kernel does with a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// Loads read this value.
    AnswerLoads(u32),
    /// Stores are queued.
    BufferStores,
    /// Stores are queued and make `value` the stored bits `& mask`; loads read `value`.
    Mirror { value: u32, mask: u32 },
}

/// What became of a guest store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Queued,
    /// The register's stores are queued, but the queue is full: userspace must take
    /// them before this one.
    QueueFull,
    /// Not a queued register (or a width it does not queue): an INST_EMUL exit.
    NotHandled,
}

/// One VM's handled registers.
#[derive(Debug)]
pub struct MmioShortcuts {
    /// `(gpa, what)`; the used entries first, `len` of them.
    regs: [(u64, Shortcut); MAX_SHORTCUTS],
    len: usize,
}

impl Default for MmioShortcuts {
    fn default() -> Self {
        MmioShortcuts {
            regs: [(0, Shortcut::BufferStores); MAX_SHORTCUTS],
            len: 0,
        }
    }
}

impl MmioShortcuts {
    /// Handles `gpa` as `what` from now on, replacing what it was. `ENOSPC` when
    /// [`MAX_SHORTCUTS`] other registers are handled already.
    pub fn set(&mut self, gpa: u64, what: Shortcut) -> KResult<()> {
        let used = self.regs.get_mut(..self.len).ok_or(Errno::EINVAL)?;
        if let Some(e) = used.iter_mut().find(|e| e.0 == gpa) {
            e.1 = what;
            return Ok(());
        }
        let free = self.regs.get_mut(self.len).ok_or(Errno::ENOSPC)?;
        *free = (gpa, what);
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// Stops handling `gpa` (nothing to do if it was not). Stores already queued stay
    /// for userspace to take.
    pub fn clear(&mut self, gpa: u64) {
        let Some(used) = self.regs.get_mut(..self.len) else {
            return;
        };
        if let Some(i) = used.iter().position(|e| e.0 == gpa) {
            // Keeps the used entries first: the last one takes the freed place.
            let last = used.len().saturating_sub(1);
            used.swap(i, last);
            self.len = last;
        }
    }

    /// Forgets every register and queued store (the VM is reset).
    pub fn clear_all(&mut self, queue: &MmioStoreQueue) {
        self.len = 0;
        queue.take(|_| {});
    }

    fn find(&self, gpa: u64) -> Option<Shortcut> {
        let used = self.regs.get(..self.len)?;
        used.iter().find(|e| e.0 == gpa).map(|e| e.1)
    }

    /// The value a load of `size` bytes at `gpa` reads, if the kernel answers it: only
    /// a 1-, 2- or 4-byte load at exactly an answered address, which reads the low
    /// `size` bytes (zero-extended; the caller sign-extends as the instruction says).
    pub fn load(&self, gpa: u64, size: u8) -> Option<u64> {
        let mask = width_mask(size)?;
        match self.find(gpa)? {
            Shortcut::AnswerLoads(v) | Shortcut::Mirror { value: v, .. } => {
                Some(u64::from(v) & mask)
            }
            Shortcut::BufferStores => None,
        }
    }

    /// Queues a guest store of `size` bytes of `value` at `gpa` in `queue` if the
    /// kernel queues that register's stores; `opening` is called first when the store
    /// opens the queue (to set its deadline).
    pub fn store(
        &mut self,
        queue: &MmioStoreQueue,
        gpa: u64,
        size: u8,
        value: u64,
        opening: impl FnOnce(),
    ) -> Store {
        let Some(mask) = width_mask(size) else {
            return Store::NotHandled;
        };
        let used = self.regs.get_mut(..self.len).unwrap_or(&mut []);
        let Some(reg) = used.iter_mut().find(|e| e.0 == gpa) else {
            return Store::NotHandled;
        };
        if matches!(reg.1, Shortcut::AnswerLoads(_)) {
            return Store::NotHandled;
        }
        if !queue.is_open() {
            opening();
        }
        match queue.push(gpa, size, value, true) {
            Push::Queued => {}
            Push::Full | Push::Closed => return Store::QueueFull,
        }
        if let Shortcut::Mirror { value: v, mask: m } = &mut reg.1 {
            // The mask keeps the low 32 bits at most.
            *v = (value & mask) as u32 & *m;
        }
        Store::Queued
    }

    /// Fills the EL2 code's rows of `a`: the first answered registers (loads of the
    /// others still come to the run loop) and the first registers whose stores are
    /// queued (a mirrored register's stay the run loop's: it changes the value too).
    pub fn el2_rows(&self, a: &mut El2Answers) {
        let used = self.regs.get(..self.len).unwrap_or(&[]);
        let answered = used.iter().filter_map(|e| match e.1 {
            Shortcut::AnswerLoads(v) => Some(El2MmioAnswer {
                ipa: e.0,
                value: u64::from(v),
            }),
            // A mirrored register changes with every vCPU's stores: a row another
            // vCPU copied could lag behind one. Its loads stay the run loop's.
            Shortcut::BufferStores | Shortcut::Mirror { .. } => None,
        });
        a.mmio_rows = 0;
        for (row, r) in a.mmio.iter_mut().zip(answered) {
            *row = r;
            a.mmio_rows = a.mmio_rows.saturating_add(1);
        }
        let queued = used
            .iter()
            .filter(|e| e.1 == Shortcut::BufferStores)
            .map(|e| e.0);
        a.store_rows = 0;
        for (row, gpa) in a.store_ipa.iter_mut().zip(queued) {
            *row = gpa;
            a.store_rows = a.store_rows.saturating_add(1);
        }
    }

    /// Moves every store in `queue`, oldest first, into `out`, the bytes of a
    /// `VmMmioStores`, written in place (2 KiB is much for a kernel stack). Returns how
    /// many stores were lost ([`MmioStoreQueue::take`]).
    pub fn take_into(&mut self, queue: &MmioStoreQueue, out: &mut [u8]) -> KResult<u32> {
        if out.len() != size_of::<VmMmioStores>() {
            return Err(Errno::EINVAL);
        }
        out.fill(0);
        let (head, entries) = out.split_at_mut(offset_of!(VmMmioStores, stores));
        let mut slots = entries.chunks_exact_mut(size_of::<VmMmioStore>());
        let mut n = 0u32;
        let lost = queue.take(|s| {
            // The queue holds MMIO_STORES_MAX at most, as many as `out` has room for.
            if let Some(dst) = slots.next() {
                dst.copy_from_slice(s.as_bytes());
                n = n.saturating_add(1);
            }
        });
        let count = n.to_ne_bytes();
        head.get_mut(..count.len())
            .ok_or(Errno::EINVAL)?
            .copy_from_slice(&count);
        Ok(lost)
    }
}

/// The bits a 1-, 2- or 4-byte access carries; `None` for other widths.
fn width_mask(size: u8) -> Option<u64> {
    match size {
        1 => Some(0xff),
        2 => Some(0xffff),
        4 => Some(0xffff_ffff),
        _ => None,
    }
}
