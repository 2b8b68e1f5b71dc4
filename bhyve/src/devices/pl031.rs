//! The PL031 real-time clock (Arm DDI 0224), vm-superio's `Rtc`: the guest reads the
//! host's wall-clock time in seconds and may set its own offset through RTCLR.
//!
//! vm-superio implements no match (alarm) interrupt, so the line never rises; the
//! level is still computed from RTCMIS so that it follows the model if it ever does.

use vm_superio::Rtc;

use crate::mmio::MmioDevice;

const WINDOW: u64 = 0x1000;

pub struct Pl031 {
    rtc: Rtc<vm_superio::rtc_pl031::NoEvents>,
}

impl Default for Pl031 {
    fn default() -> Self {
        Pl031 { rtc: Rtc::new() }
    }
}

impl Pl031 {
    pub fn new() -> Self {
        Self::default()
    }
}

impl MmioDevice for Pl031 {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= WINDOW {
            return 0;
        }
        let reg = (offset & !3) as u16;
        let mut data = [0u8; 4];
        self.rtc.read(reg, &mut data);
        let v = u64::from(u32::from_le_bytes(data)) >> ((offset & 3) * 8);
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        // Registers are written whole, at their offset.
        if offset >= WINDOW || offset & 3 != 0 {
            return;
        }
        self.rtc.write(offset as u16, &(value as u32).to_le_bytes());
    }

    fn irq_level(&self) -> bool {
        let st = self.rtc.state();
        st.ris & st.imsc != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    const RTCDR: u64 = 0x0;
    const RTCLR: u64 = 0x8;
    const RTCCR: u64 = 0xc;
    const RTCIMSC: u64 = 0x10;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn reads_host_time_and_takes_an_offset() {
        let mut r = Pl031::new();
        let t = r.read(RTCDR, 4);
        assert!(t.abs_diff(now() & 0xffff_ffff) <= 2, "{t}");
        r.write(RTCLR, 4, 1000);
        assert_eq!(r.read(RTCLR, 4), 1000);
        let t = r.read(RTCDR, 4);
        assert!((1000..1003).contains(&t), "{t}");
        assert_eq!(r.read(RTCCR, 4), 1, "always enabled");
    }

    #[test]
    fn ids_and_interrupt_mask() {
        let mut r = Pl031::new();
        let ids: Vec<u64> = (0..8).map(|i| r.read(0xfe0 + 4 * i, 4)).collect();
        assert_eq!(ids, [0x31, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        r.write(RTCIMSC, 4, 1);
        assert_eq!(r.read(RTCIMSC, 4), 1);
        assert!(!r.irq_level(), "no alarm has matched");
        assert_eq!(r.read(0x2000, 4), 0);
    }
}
