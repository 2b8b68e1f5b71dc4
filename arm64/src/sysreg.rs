//! `mrs` and `msr` by register name.

/// Reads the system register named by the literal (`mrs!("ctr_el0")`, or an
/// `S<op0>_<op1>_C<n>_C<m>_<op2>` encoding for names the assembler does not know).
///
/// Reading has no effect on memory. Callers name registers that exist at the
/// exception level they run at; reading one that does not is an UNDEF, which no
/// caller here can make happen at run time because the name is fixed at build time.
#[macro_export]
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a system register has no memory effect (see `mrs!`).
        unsafe {
            core::arch::asm!(concat!("mrs {0}, ", $reg), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}

/// Writes `$val` to the system register named by the literal.
///
/// A write can change translation, exception routing or what a lower exception level
/// sees, so it is `unsafe`: the macro expands to the bare `asm!` and every use sits
/// in an `unsafe` block whose SAFETY comment says why that write is sound there.
#[macro_export]
macro_rules! msr {
    ($reg:literal, $val:expr) => {{
        let v: u64 = $val;
        core::arch::asm!(concat!("msr ", $reg, ", {0}"), in(reg) v,
            options(nomem, nostack, preserves_flags))
    }};
}
