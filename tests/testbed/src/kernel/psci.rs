//! PSCI over SMC: QEMU's firmware interface when virtualization=on and no EL3.

const CPU_ON: u64 = 0xC400_0003;
const SYSTEM_OFF: u64 = 0x8400_0008;

fn smc(func: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: u64;
    // SAFETY: a PSCI call; the firmware (QEMU) preserves everything but x0..x3.
    unsafe {
        core::arch::asm!("smc #0", inout("x0") func => ret, inout("x1") a1 => _,
            inout("x2") a2 => _, inout("x3") a3 => _, options(nostack))
    };
    ret as i64
}

/// Starts `mpidr` at physical address `entry` with x0 = `ctx`. Returns PSCI's status.
/// CPU_ON's answer for an MPIDR that names no CPU of this machine.
pub const INVALID_PARAMETERS: i64 = -2;

pub fn cpu_on(mpidr: u64, entry: u64, ctx: u64) -> i64 {
    smc(CPU_ON, mpidr, entry, ctx)
}

pub fn system_off() -> ! {
    smc(SYSTEM_OFF, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}
