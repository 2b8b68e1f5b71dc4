//! VMIDs: 8 bits on Armv8.0 (VTCR_EL2.VS = 0). VMID 0 is never handed out, so a
//! VTTBR_EL2 of a guest is never the host's 0. A VMID is returned when its VM is
//! destroyed, after a TLB invalidation of that VMID, so a simple free set is enough (no
//! generations): at most 255 VMs exist at once, the 256th gets `ENOSPC`.

pub const VMID_COUNT: usize = 256;

#[derive(Debug, Clone)]
pub struct VmidAlloc {
    used: [u64; VMID_COUNT / 64],
    /// Where the next search starts, so a freed VMID is not reused at once.
    next: usize,
}

impl Default for VmidAlloc {
    fn default() -> Self {
        VmidAlloc {
            used: [1, 0, 0, 0], // VMID 0 reserved for the host
            next: 1,
        }
    }
}

impl VmidAlloc {
    pub fn alloc(&mut self) -> Option<u16> {
        for k in 0..VMID_COUNT {
            let v = (self.next.wrapping_add(k)) % VMID_COUNT;
            let (w, b) = (v / 64, v % 64);
            let word = self.used.get_mut(w)?;
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                self.next = v.wrapping_add(1) % VMID_COUNT;
                return u16::try_from(v).ok();
            }
        }
        None
    }

    pub fn free(&mut self, vmid: u16) {
        let v = usize::from(vmid);
        if v == 0 || v >= VMID_COUNT {
            return;
        }
        if let Some(word) = self.used.get_mut(v / 64) {
            *word &= !(1 << (v % 64));
        }
    }

    pub fn in_use(&self) -> usize {
        // Minus the reserved VMID 0.
        let n: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        usize::try_from(n).unwrap_or(0).saturating_sub(1)
    }
}
