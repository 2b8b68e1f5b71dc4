//! Loads the kernel answers for userspace (VM_SET_MMIO_ANSWER, our extension): a
//! device model publishes the value of a register whose reads have no side effect and
//! that only it changes, and a guest load of exactly that register is answered at the
//! exit instead of going to userspace. A UART's flag register, read before every byte
//! a console prints, is the case it is made for: it halves a console's exits.

use crate::errno::{Errno, KResult};

/// Registers one VM may have answered at once.
pub const MAX_ANSWERS: usize = 16;

/// One VM's answered registers, by guest physical address.
#[derive(Debug, Default)]
pub struct MmioAnswers {
    /// `(gpa, value)`; the used entries first, `len` of them.
    entries: [(u64, u32); MAX_ANSWERS],
    len: usize,
}

impl MmioAnswers {
    /// Answers loads at `gpa` with `value` from now on, replacing an earlier value.
    /// `ENOSPC` when [`MAX_ANSWERS`] other registers are answered already.
    pub fn set(&mut self, gpa: u64, value: u32) -> KResult<()> {
        let used = self.entries.get_mut(..self.len).ok_or(Errno::EINVAL)?;
        if let Some(e) = used.iter_mut().find(|e| e.0 == gpa) {
            e.1 = value;
            return Ok(());
        }
        let free = self.entries.get_mut(self.len).ok_or(Errno::ENOSPC)?;
        *free = (gpa, value);
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// Stops answering loads at `gpa` (nothing to do if it was not answered).
    pub fn clear(&mut self, gpa: u64) {
        let Some(used) = self.entries.get_mut(..self.len) else {
            return;
        };
        if let Some(i) = used.iter().position(|e| e.0 == gpa) {
            // Keeps the used entries first: the last one takes the freed place.
            let last = used.len().saturating_sub(1);
            used.swap(i, last);
            self.len = last;
        }
    }

    /// Forgets every answer (the VM is reset).
    pub fn clear_all(&mut self) {
        self.len = 0;
    }

    /// The value a load of `size` bytes at `gpa` reads, if the kernel answers it: only
    /// a 1-, 2- or 4-byte load at exactly a published address, which reads the low
    /// `size` bytes (zero-extended; the caller sign-extends as the instruction says).
    pub fn load(&self, gpa: u64, size: u8) -> Option<u64> {
        let mask: u64 = match size {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => return None,
        };
        let used = self.entries.get(..self.len)?;
        used.iter()
            .find(|e| e.0 == gpa)
            .map(|e| u64::from(e.1) & mask)
    }
}
