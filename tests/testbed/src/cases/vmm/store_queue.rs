//! The VM's MMIO store queue with two vCPUs storing at once, each on its own CPU: the
//! EL2 code of both adds to one queue, and every store comes out once, each vCPU's
//! in the order it made them.

use super::{destroy, hvc_of, run_vcpu, set_shortcuts, set_vcpu_reg, start, stat, vm_ioctl, Core};
use crate::kernel::cpu;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use vmm_core::stats::Stat;
use vmm_core::sync::SpinLock;
use vmm_sys::abi::*;
use vmm_sys::exit::ExitCode;
use vmm_sys::ioctl::*;
use vmm_sys::reg::{VM_REG_GUEST_PC, VM_REG_GUEST_X0};

const NAME: &[u8] = b"tb-store-queue";
/// Stores per vCPU: many times the queue's 128, so that it fills, is taken and is
/// reopened while the other vCPU adds to it.
const N: u64 = 3000;
const QUEUED: u64 = 0x10000;

/// The stores taken so far, in the order of the takes (a take and its append under
/// this lock, so two CPUs' takes land in the order they were made).
static TAKEN: SpinLock<Vec<u32>> = SpinLock::new_spin(Vec::new());

/// Runs vCPU `vcpu` until its final `hvc #2`, taking the queue at every BOGUS exit.
/// 0 when it got there, else a code: 1 an ioctl failed, 2 another exit.
fn run_and_take(vmm: &Core, vcpu: i32) -> u64 {
    let mut st = Box::new(VmMmioStores::default());
    loop {
        let e = match run_vcpu(vmm, NAME, vcpu) {
            Ok(e) => e,
            Err(_) => return 1,
        };
        if e.exitcode == ExitCode::Bogus as i32 {
            let mut taken = TAKEN.lock();
            if vm_ioctl(vmm, NAME, VM_GET_MMIO_STORES, &mut *st).is_err() {
                return 1;
            }
            let n = (st.count as usize).min(st.stores.len());
            taken.extend(st.stores[..n].iter().map(|s| s.value));
            continue;
        }
        return if hvc_of(&e) == Some(2) { 0 } else { 2 };
    }
}

fn second_cpu(vmm: u64) -> u64 {
    // SAFETY: two_vcpus passes a &Core it keeps alive until cpu::wait(1) returns.
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    run_and_take(vmm, 1)
}

/// tests/guests/mmio_queue_smp.S on vCPU 0 here and vCPU 1 on CPU 1, `N` stores each
/// to a register the kernel queues.
pub fn two_vcpus(vmm: &Core, image: &[u8], ncpu: usize) -> Result<String, String> {
    if ncpu < 2 {
        return Err(format!("needs two CPUs, the testbed has {ncpu}"));
    }
    TAKEN.lock().clear();
    start(vmm, NAME, image, 0)?;
    let mut posted = false;
    let res = (|| {
        set_shortcuts(vmm, NAME, &[(QUEUED, 0, MMIO_BUFFER_STORES)])?;
        set_vcpu_reg(vmm, NAME, 0, VM_REG_GUEST_X0 + 1, N)?;
        set_vcpu_reg(vmm, NAME, 1, VM_REG_GUEST_PC, 0x8000_0000)?;
        set_vcpu_reg(vmm, NAME, 1, VM_REG_GUEST_X0, 1)?;
        set_vcpu_reg(vmm, NAME, 1, VM_REG_GUEST_X0 + 1, N)?;
        vm_ioctl(vmm, NAME, VM_ACTIVATE_CPU, &mut VmActivateCpu { vcpuid: 1 })?;
        cpu::post(1, second_cpu, vmm as *const Core as u64);
        posted = true;
        let r0 = run_and_take(vmm, 0);
        let r1 = cpu::wait(1);
        posted = false;
        if (r0, r1) != (0, 0) {
            return Err(format!(
                "vCPU 0 code {r0}, vCPU 1 code {r1} (1 = an ioctl failed, 2 = an exit other than BOGUS or the final hvc)"
            ));
        }
        let taken = core::mem::take(&mut *TAKEN.lock());
        let mut next = [0u32; 2];
        for (k, &v) in taken.iter().enumerate() {
            let (tag, i) = ((v >> 16) as usize, v & 0xffff);
            match next.get_mut(tag) {
                Some(want) if *want == i => *want += 1,
                _ => {
                    return Err(format!(
                        "store {k} of {}: {v:#x}, want vCPU 0's {:#x} or vCPU 1's {:#x}",
                        taken.len(),
                        next[0],
                        0x1_0000 | next[1]
                    ))
                }
            }
        }
        if next != [N as u32; 2] {
            return Err(format!("taken {next:?} of each vCPU's {N}"));
        }
        let at_el2 = [
            stat(vmm, NAME, 0, Stat::MmioEl2)?,
            stat(vmm, NAME, 1, Stat::MmioEl2)?,
        ];
        let queued = stat(vmm, NAME, 0, Stat::MmioQueued)? + stat(vmm, NAME, 1, Stat::MmioQueued)?;
        if queued != 2 * N || at_el2.contains(&0) {
            return Err(format!(
                "stores queued {queued} (want {}), at EL2 by vCPU 0 and 1: {at_el2:?} (want both > 0)",
                2 * N
            ));
        }
        // Where the two vCPUs' stores interleave in the queue.
        let switches = taken
            .windows(2)
            .filter(|w| w[0] >> 16 != w[1] >> 16)
            .count();
        Ok(format!(
            "{} stores of two vCPUs on two CPUs taken once each, each vCPU's in order; {} and {} queued at EL2; the vCPUs alternate {switches} times in the queue",
            2 * N,
            at_el2[0],
            at_el2[1]
        ))
    })();
    // The destroy ends vCPU 1's VM_RUN if it is still in one (SUSPENDED, an error
    // code), then CPU 1's call returns.
    let destroyed = destroy(vmm, NAME);
    if posted {
        cpu::wait(1);
    }
    destroyed?;
    res
}
