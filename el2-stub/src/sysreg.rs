//! `mrs`/`msr` wrappers. Register names are literals so each access is one instruction.

/// Reads a system register.
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a system register at EL2 has no side effect on memory; the
        // callers only name registers that exist on every Armv8.0 CPU with GICv3.
        unsafe {
            core::arch::asm!(concat!("mrs {0}, ", $reg), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}

/// Writes a system register.
macro_rules! msr {
    ($reg:literal, $val:expr) => {{
        let v: u64 = $val;
        // SAFETY: the world switch writes EL1 and EL2 state that only takes effect
        // for the lower ELs or after the next `eret`; EL2's own translation and
        // vectors are never written here.
        unsafe {
            core::arch::asm!(concat!("msr ", $reg, ", {0}"), in(reg) v,
                options(nomem, nostack, preserves_flags))
        };
    }};
}

/// Instruction synchronisation barrier.
pub fn isb() {
    // SAFETY: a barrier has no operands and no memory effect beyond ordering.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

pub(crate) use {mrs, msr};
