//! The console: QEMU virt's PL011 at PA 0x0900_0000, polled. The host test harness
//! reads this serial log and parses `TEST <name> PASS|FAIL <detail>` lines.

use crate::kernel::mm::pa_to_va;
use core::fmt::{self, Write};
use vmm_core::sync::SpinLock;

const UART_PA: u64 = 0x0900_0000;
const DR: u64 = 0x00;
const FR: u64 = 0x18;
const FR_TXFF: u32 = 1 << 5;

pub struct Uart;

impl Uart {
    fn putc(&mut self, c: u8) {
        let base = pa_to_va(UART_PA);
        // SAFETY: the PL011 registers are mapped as device memory in the direct map.
        unsafe {
            while core::ptr::read_volatile((base + FR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((base + DR) as *mut u32, c as u32);
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.putc(b'\r');
            }
            self.putc(b);
        }
        Ok(())
    }
}

pub static CONSOLE: SpinLock<Uart> = SpinLock::new_spin(Uart);

pub fn print(args: fmt::Arguments) {
    let _ = CONSOLE.lock().write_fmt(args);
}

#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => { $crate::kernel::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
