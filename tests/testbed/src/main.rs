//! The testbed: a small bare-metal host kernel for QEMU's virt board
//! (`-M virt,virtualization=on,gic-version=3 -cpu cortex-a57 -smp 2 -m 1G`) standing in
//! for FreeBSD: it enters at EL2, leaves FreeBSD's hyp-stub contract, runs at EL1 at
//! high addresses and brings the EL2 blob up on every CPU the way vmm.ko does. Then it
//! runs the tests and prints `TEST <name> PASS|FAIL <detail>` lines, or the benchmarks,
//! or serves /dev/vmm to the host over virtio-console. See docs/testbed.md.
//!
//! * `kernel/`: the host kernel itself: boot, memory, CPUs, GIC, timer, console, PSCI,
//!   the hypervisor's bring-up (hyp.rs) and the `Host` it gives vmm-core (host.rs).
//! * `cases/`: what runs on it: the EL2 blob tests (el2_blob.rs, over test_vm.rs), the
//!   tests through vmm-core (vmm/), the benchmarks (bench.rs).
//! * `server/`: server mode: /dev/vmm requests from the host, over virtio-console.
#![no_std]
#![no_main]

extern crate alloc;

mod cases;
mod kernel;
mod server;

use cases::{bench, el2_blob};
use core::sync::atomic::Ordering;
use kernel::{cpu, gic, mm, psci};

#[global_allocator]
static ALLOC: mm::KernelAlloc = mm::KernelAlloc;

/// Called by the boot code at high addresses with the MMU on.
#[no_mangle]
extern "C" fn kernel_entry(cpu: u64) -> ! {
    if cpu == 0 {
        kmain()
    } else {
        secondary_main(cpu as usize)
    }
}

fn kmain() -> ! {
    kprintln!(
        "testbed: booted, cpu 0 at EL{} ({} host), kernel at {:#x}",
        if cpu::vhe_host() { 2 } else { 1 },
        if cpu::vhe_host() { "VHE" } else { "nVHE" },
        kmain as *const () as usize
    );
    mm::init();
    gic::init_distributor();
    let gic_ok = gic::init_cpu();
    cpu::ONLINE[0].store(true, Ordering::Release);
    cpu::irq_enable();
    // SAFETY: the word below the kernel image is RAM in the direct map; QEMU's generic
    // loader (`-device loader`) may have written the mode there before boot.
    let mode = unsafe { core::ptr::read_volatile(mm::pa_to_va(bench::MODE_PA) as *const u32) };
    if mode == bench::MODE_BENCH {
        bench::run();
    } else if mode == server::MODE_SERVE {
        server::run();
    } else {
        el2_blob::run_all(gic_ok);
    }
    psci::system_off()
}

fn secondary_main(cpu: usize) -> ! {
    let ok = gic::init_cpu();
    if !ok {
        kprintln!("PANIC cpu {cpu}: no redistributor");
    }
    cpu::ONLINE[cpu].store(true, Ordering::Release);
    cpu::idle_loop(cpu)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kprintln!("PANIC cpu {}: {}", cpu::id(), info);
    psci::system_off()
}
