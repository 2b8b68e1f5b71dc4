//! VM_RUN through the dispatcher, with scripted guests on the fake host.

use super::*;
use crate::fake::Scripted;
use crate::host::Host;
use crate::stats::Stat;
use vmm_sys::arm64::esr::{self, dabt, ec, esr as mk};
use vmm_sys::arm64::sysreg::{self, SysReg};
use vmm_sys::exit::ExitCode;
use vmm_sys::hyp::{excp, VcpuContext};
use vmm_sys::reg;

fn hvc() -> Scripted {
    Scripted::sync(mk(ec::HVC64, true, 0)).with(|c| c.pc += 4)
}

fn entries(v: &Vmm<crate::fake::FakeHost>) -> Vec<VcpuContext> {
    v.host().entries.lock().unwrap().clone()
}

fn stat(v: &Vmm<crate::fake::FakeHost>, name: &str, s: Stat) -> u64 {
    let mut st = VmStats {
        cpuid: 0,
        ..Default::default()
    };
    vmio(v, name, ioctl::VM_STATS, &mut st).unwrap();
    st.statbuf[s as usize]
}

/// A VM "g" at PC = RAM, EL1h.
/// Polls `cond` until it holds; panics naming `what` after 20 s. For "the other
/// thread has got there" (a fixed sleep is not enough on a loaded machine).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Waits until the vCPU of a VM_RUN started on another thread has gone to sleep
/// (`Host::sleep` called more often than `before` times).
fn wait_asleep(v: &Vmm<crate::fake::FakeHost>, before: usize) {
    wait_until("the vCPU sleeps in WFI", || {
        v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst) > before
    });
}

fn guest() -> Vmm<crate::fake::FakeHost> {
    let v = vmm();
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v
}

fn sys_iss(r: SysReg, rt: u8, read: bool) -> u32 {
    r.0 | (u32::from(rt) << 5) | u32::from(read)
}

#[test]
fn hvc_is_an_smccc_exit_and_resumes_after_it() {
    let v = guest();
    v.host().push(hvc().with(|c| {
        c.x[0] = 0x8400_0000;
        for i in 1..8 {
            c.x[i] = i as u64 * 11;
        }
        c.pc += 4;
    }));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc);
    assert_eq!(e.pc, RAM + 4, "ELR already past the HVC");
    // SAFETY: test: reading the member the exit code names.
    let call = unsafe { e.u.smccc_call };
    assert_eq!(call.func_id, 0x8400_0000);
    assert_eq!(call.args, [11, 22, 33, 44, 55, 66, 77]);
    set_reg(&v, "g", 0, 0, 0x1_0000).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let en = entries(&v);
    assert_eq!(en[1].pc, RAM + 4, "no further advance after HVC");
    assert_eq!(en[1].x[0], 0x1_0000, "the SMCCC result is in x0");
    // The first entry had the guest's reset state and our controls.
    let c = &en[0];
    assert_eq!(c.pstate, 0x3c5);
    assert_eq!(
        c.el2.hcr_el2,
        crate::vcpu::HostTraps::new(&crate::fake::params().id_regs).hcr
    );
    assert_eq!(c.el2.vmpidr_el2, 0x8000_0000);
    assert_eq!(c.el2.vpidr_el2, crate::fake::params().id_regs.midr);
    assert_ne!(c.el2.vttbr_el2 >> 48, 0, "a guest VMID");
    assert_eq!(
        c.el2.vtcr_el2, v.cfg.vtcr_el2,
        "the stage-2 control with the tables"
    );
    assert_ne!(c.timer.cntvoff_el2, 0);
    assert_eq!(stat(&v, "g", Stat::Smccc), 2);
    assert_eq!(stat(&v, "g", Stat::VmRun), 2);
}

#[test]
fn smc_is_an_smccc_exit_and_resumes_after_it() {
    let v = guest();
    v.host()
        .push(Scripted::sync(mk(ec::SMC64, true, 0)).with(|c| c.x[0] = 0x8400_0008));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc);
    assert_eq!(e.pc, RAM, "ELR at the trapped SMC");
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[1].pc, RAM + 4);
    // Non-zero immediates are not SMCCC: HYP, with the syndrome.
    v.host().push(Scripted::sync(mk(ec::HVC64, true, 5)));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Hyp);
    // SAFETY: test: the HYP member.
    assert_eq!(unsafe { e.u.hyp.esr_el2 }, mk(ec::HVC64, true, 5));
}

const MMIO: u64 = 0x0a00_0010;

fn load_iss(sas: u32, sse: bool, sf: bool, rt: u32) -> u32 {
    dabt::ISV
        | (sas << dabt::SAS_SHIFT)
        | if sse { dabt::SSE } else { 0 }
        | if sf { dabt::SF } else { 0 }
        | (rt << dabt::SRT_SHIFT)
        | 0x07
}

#[test]
fn mmio_loads_every_size_sign_and_register() {
    let v = guest();
    let cases: &[(u32, bool, bool, u32, u64, u64)] = &[
        // sas, sse, sf, rt, what userspace sets, what the guest register holds
        (0, false, false, 1, 0x1ff, 0xff),               // ldrb w1
        (0, true, false, 2, 0x80, 0xffff_ff80),          // ldrsb w2
        (0, true, true, 3, 0x80, 0xffff_ffff_ffff_ff80), // ldrsb x3
        (1, false, false, 4, 0x1_8001, 0x8001),          // ldrh w4
        (1, true, true, 5, 0x8001, 0xffff_ffff_ffff_8001), // ldrsh x5
        (1, true, false, 6, 0x7fff, 0x7fff),             // ldrsh w6, positive
        (2, false, false, 7, 0xdead_beef_1234_5678, 0x1234_5678), // ldr w7
        (2, true, true, 8, 0x8000_0000, 0xffff_ffff_8000_0000), // ldrsw x8
        (
            3,
            false,
            true,
            30,
            0x0123_4567_89ab_cdef,
            0x0123_4567_89ab_cdef,
        ), // ldr x30
        (3, false, true, 31, 0x55, 0),                   // ldr xzr
    ];
    for (i, &(sas, sse, sf, rt, user, want)) in cases.iter().enumerate() {
        let fault_pc = RAM + 0x100 * i as u64;
        v.host().push(
            Scripted::abort(mk(ec::DABT_LOW, true, load_iss(sas, sse, sf, rt)), MMIO).with(
                move |c| {
                    c.pc = fault_pc;
                    c.x.iter_mut().for_each(|x| *x = 0x1111);
                },
            ),
        );
        let (e, _) = run(&v, "g", 0).unwrap();
        assert_eq!(exitcode(&e), ExitCode::InstEmul);
        assert_eq!((e.pc, e.inst_length), (fault_pc, 4));
        // SAFETY: test: the INST_EMUL member.
        let ie = unsafe { e.u.inst_emul };
        assert_eq!(ie.gpa, MMIO);
        assert_eq!(ie.vie.access_size(), 1 << sas);
        assert_eq!(ie.vie.sign_extend(), sse);
        assert!(!ie.vie.is_write());
        let regnum = if rt == 31 {
            reg::VM_REG_LAST as i32
        } else {
            rt as i32
        };
        assert_eq!(ie.vie.reg, regnum, "case {i}");
        assert_eq!(ie.paging.flags & 0x1f, 5, "EL1h");
        set_reg(&v, "g", 0, ie.vie.reg as u32, user).unwrap();
        v.host().push(hvc());
        run(&v, "g", 0).unwrap();
        let en = entries(&v);
        let c = en.last().unwrap();
        assert_eq!(c.pc, fault_pc + 4, "case {i}: PC past the load");
        if rt < 31 {
            assert_eq!(c.x[rt as usize], want, "case {i}");
        } else {
            assert!(
                c.x.iter().all(|&x| x == 0x1111),
                "xzr load touched no register"
            );
        }
    }
    assert_eq!(stat(&v, "g", Stat::InstEmul), cases.len() as u64);
}

fn set_answer(v: &Vmm<crate::fake::FakeHost>, gpa: u64, value: u32, flags: u32) -> KResult<()> {
    let mut a = VmMmioShortcut {
        gpa,
        value,
        flags,
        mask: u32::MAX,
        ..Default::default()
    };
    vmio(v, "g", ioctl::VM_SET_MMIO_SHORTCUT, &mut a)
}

fn take_stores(v: &Vmm<crate::fake::FakeHost>) -> Vec<(u64, u8, u32)> {
    let mut st = VmMmioStores::default();
    vmio(v, "g", ioctl::VM_GET_MMIO_STORES, &mut st).unwrap();
    st.stores[..st.count as usize]
        .iter()
        .map(|s| (s.gpa, s.size, s.value))
        .collect()
}

fn store_iss(sas: u32, rt: u32) -> u32 {
    dabt::ISV | dabt::WNR | (sas << dabt::SAS_SHIFT) | (rt << dabt::SRT_SHIFT) | 0x06
}

/// Runs one load (`sas`, `sse`, `sf`, `rt`) from `gpa`, then an HVC: the exit the load
/// made and, if the kernel answered it, what the register holds.
fn load_once(v: &Vmm<crate::fake::FakeHost>, gpa: u64, iss: u32, rt: usize) -> (ExitCode, u64) {
    v.host()
        .push(Scripted::abort(mk(ec::DABT_LOW, true, iss), gpa).with(|c| {
            c.pc = RAM + 0x40;
            c.x.iter_mut().for_each(|x| *x = 0x1111);
        }));
    v.host().push(hvc());
    let (e, _) = run(v, "g", 0).unwrap();
    let code = exitcode(&e);
    if code == ExitCode::InstEmul {
        // Userspace answers and the guest goes on to the HVC.
        let (e, _) = run(v, "g", 0).unwrap();
        assert_eq!(exitcode(&e), ExitCode::Smccc);
        return (code, 0);
    }
    let en = entries(v);
    let c = en.last().unwrap();
    assert_eq!(c.pc, RAM + 0x44, "PC past the load at the next entry");
    (code, c.x[rt])
}

#[test]
fn mmio_answers_serve_loads_of_their_register_only() {
    let v = guest();
    set_answer(&v, MMIO, 0x8190, MMIO_ANSWER_LOADS).unwrap();
    let cases: &[(u32, bool, bool, u32, u64)] = &[
        // sas, sse, sf, rt, what the guest register holds
        (0, false, false, 1, 0x90),                // ldrb w1
        (1, true, true, 5, 0xffff_ffff_ffff_8190), // ldrsh x5
        (1, true, false, 6, 0xffff_8190),          // ldrsh w6
        (2, false, false, 7, 0x8190),              // ldr w7
        (2, false, false, 31, 0),                  // ldr wzr
    ];
    for (i, &(sas, sse, sf, rt, want)) in cases.iter().enumerate() {
        let (code, got) = load_once(&v, MMIO, load_iss(sas, sse, sf, rt), rt as usize % 31);
        assert_eq!(
            code,
            ExitCode::Smccc,
            "case {i}: answered, the HVC is the exit"
        );
        if rt < 31 {
            assert_eq!(got, want, "case {i}");
        } else {
            assert_eq!(got, 0x1111, "xzr load touched no register");
        }
    }
    assert_eq!(stat(&v, "g", Stat::MmioAnswered), cases.len() as u64);
    assert_eq!(stat(&v, "g", Stat::InstEmul), 0);
    // An 8-byte load, a load beside the register and a store go to userspace.
    let (code, _) = load_once(&v, MMIO, load_iss(3, false, true, 2), 2);
    assert_eq!(code, ExitCode::InstEmul, "8-byte load");
    let (code, _) = load_once(&v, MMIO + 1, load_iss(0, false, false, 2), 2);
    assert_eq!(code, ExitCode::InstEmul, "load one byte further");
    let (code, _) = load_once(&v, MMIO, store_iss(2, 2), 2);
    assert_eq!(code, ExitCode::InstEmul, "store");
    // A new value replaces the old; cleared, loads go to userspace again.
    set_answer(&v, MMIO, 0x42, MMIO_ANSWER_LOADS).unwrap();
    let (_, got) = load_once(&v, MMIO, load_iss(2, false, false, 3), 3);
    assert_eq!(got, 0x42);
    set_answer(&v, MMIO, 0, 0).unwrap();
    let (code, _) = load_once(&v, MMIO, load_iss(2, false, false, 3), 3);
    assert_eq!(code, ExitCode::InstEmul, "cleared");
    assert_eq!(stat(&v, "g", Stat::MmioAnswered), cases.len() as u64 + 1);
}

#[test]
fn mmio_answers_are_checked_bounded_and_reset_with_the_vm() {
    let v = guest();
    assert_eq!(
        set_answer(&v, MMIO, 1, 4),
        Err(Errno::EINVAL),
        "unknown flag"
    );

    assert_eq!(
        set_answer(&v, 1 << 52, 1, MMIO_ANSWER_LOADS),
        Err(Errno::EINVAL),
        "past the IPA limit"
    );
    let max = crate::mmio_shortcut::MAX_SHORTCUTS as u64;
    for i in 0..max {
        set_answer(&v, MMIO + 4 * i, 1, MMIO_ANSWER_LOADS).unwrap();
    }
    assert_eq!(
        set_answer(&v, MMIO + 4 * max, 1, MMIO_ANSWER_LOADS),
        Err(Errno::ENOSPC),
        "one register more than the table holds"
    );
    // Replacing a value and clearing one make no new entry; clearing makes room.
    set_answer(&v, MMIO, 7, MMIO_ANSWER_LOADS).unwrap();
    set_answer(&v, MMIO + 4, 0, 0).unwrap();
    set_answer(&v, MMIO + 4 * max, 1, MMIO_ANSWER_LOADS).unwrap();
    let (code, got) = load_once(&v, MMIO, load_iss(2, false, false, 3), 3);
    assert_eq!((code, got), (ExitCode::Smccc, 7));
    let (code, _) = load_once(&v, MMIO + 4, load_iss(2, false, false, 3), 3);
    assert_eq!(code, ExitCode::InstEmul, "cleared one");
    // VM_REINIT forgets them all, and the stores queued: the device models that set
    // them are gone.
    set_answer(&v, MMIO + 8, 0, 0).unwrap();
    set_answer(&v, MMIO + 0x100, 0, MMIO_BUFFER_STORES).unwrap();
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(2, 1)), MMIO + 0x100).with(|c| c.pc = RAM),
    );
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus, "the store first");
    let mut s = VmSuspend { how: 1 };
    vmio(&v, "g", ioctl::VM_SUSPEND, &mut s).unwrap();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        exitcode(&e),
        ExitCode::Smccc,
        "the exit held behind the store"
    );
    // SUSPENDED is never held: a vCPU that has seen it may not run again. The VMM
    // takes what is left after its vCPUs have stopped.
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Suspended);
    v.dispatch(DeviceRef::Vm(b"g"), ioctl::VM_REINIT, &mut [])
        .unwrap();
    activate(&v, "g", 0).unwrap();
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    let (code, _) = load_once(&v, MMIO, load_iss(2, false, false, 3), 3);
    assert_eq!(code, ExitCode::InstEmul, "after VM_REINIT");
    assert!(take_stores(&v).is_empty(), "queued store dropped");
}

#[test]
fn queued_mmio_stores_reach_userspace_before_any_later_exit() {
    let v = guest();
    set_answer(&v, MMIO, 0, MMIO_BUFFER_STORES).unwrap();
    // Three stores queued (byte, halfword, word; the register's value masked to the
    // width, xzr as zero), then an 8-byte store, which the kernel does not queue.
    let values = [
        (0u32, 0x1_2345u64),
        (1, 0x1_2345),
        (2, 0xdead_beef_0000_0001),
        (0, 0),
    ];
    for (i, &(sas, x)) in values.iter().enumerate() {
        let rt = if x == 0 { 31 } else { 3 };
        v.host().push(
            Scripted::abort(mk(ec::DABT_LOW, true, store_iss(sas, rt)), MMIO).with(move |c| {
                c.pc = RAM + 0x100 + 4 * i as u64;
                c.x[3] = x;
            }),
        );
    }
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(3, 3)), MMIO).with(|c| c.pc = RAM + 0x200),
    );
    let before = entries(&v).len();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus, "stores wait: BOGUS first");
    assert_eq!(
        entries(&v).len(),
        before + 5,
        "each queued store re-entered the guest"
    );
    assert_eq!(stat(&v, "g", Stat::MmioQueued), 4);
    assert_eq!(
        take_stores(&v),
        [
            (MMIO, 1, 0x45),
            (MMIO, 2, 0x2345),
            (MMIO, 4, 1),
            (MMIO, 1, 0)
        ]
    );
    // The held exit comes next, without entering the guest.
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v).len(), before + 5, "not entered");
    assert_eq!(exitcode(&e), ExitCode::InstEmul);
    // SAFETY: test: the INST_EMUL member.
    let gpa = unsafe { e.u.inst_emul.gpa };
    assert_eq!((e.pc, gpa), (RAM + 0x200, MMIO));
    assert!(take_stores(&v).is_empty());
    // Nothing queued: an exit is returned as it is.
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
}

#[test]
fn a_full_store_queue_a_wfi_and_a_host_interrupt_hand_the_queue_over() {
    let v = guest();
    set_answer(&v, MMIO, 0, MMIO_BUFFER_STORES).unwrap();
    let store = |pc: u64| {
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(0, 1)), MMIO).with(move |c| {
            c.pc = pc;
            c.x[1] = 0x61;
        })
    };
    let max = vmm_sys::abi::MMIO_STORES_MAX;
    for i in 0..=max {
        v.host().push(store(RAM + 4 * i as u64));
    }
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus, "queue full");
    assert_eq!(take_stores(&v).len(), max);
    // The store that did not fit was not done: the guest runs it again.
    let last = RAM + 4 * max as u64;
    v.host().push(store(last));
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        entries(&v).iter().rev().nth(1).unwrap().pc,
        last,
        "re-entered at the store"
    );
    assert_eq!(exitcode(&e), ExitCode::Bogus);
    assert_eq!(take_stores(&v), [(MMIO, 1, 0x61)]);
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    // A WFI with stores queued does not sleep: BOGUS at the WFI, which runs again.
    v.host().push(store(RAM + 0x40));
    v.host()
        .push(Scripted::sync(mk(ec::WFX, true, 0)).with(|c| c.pc = RAM + 0x44));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!((exitcode(&e), e.pc), (ExitCode::Bogus, RAM + 0x44));
    assert_eq!(v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst), 0);
    take_stores(&v);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v).last().unwrap().pc, RAM + 0x44, "the WFI again");
    // A host interrupt with stores queued returns to userspace too.
    v.host().push(store(RAM + 0x80));
    v.host().push(Scripted::irq());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus);
    assert_eq!(take_stores(&v).len(), 1);
}

/// A guest that queues a store and then runs on without exits (prints, then spins) is
/// kicked out within `QUEUE_LATENCY_MS`: the entry after the store arms the run's host
/// timer, whose callback IPIs the vCPU; the exit that makes returns BOGUS.
#[test]
fn queued_stores_reach_userspace_even_if_the_guest_never_exits() {
    let v = guest();
    set_answer(&v, MMIO, 0, MMIO_BUFFER_STORES).unwrap();
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(0, 1)), MMIO).with(|c| c.x[1] = 0x61),
    );
    let hp = v.host() as *const crate::fake::FakeHost as usize;
    v.host().push(Scripted::irq().with(move |_| {
        std::thread::sleep(std::time::Duration::from_millis(2));
        // SAFETY: the host outlives the run this scripted exit is part of.
        let h = unsafe { &*(hp as *const crate::fake::FakeHost) };
        assert_eq!(h.fire_due_timers(), 1, "the queue's deadline passed");
    }));
    let kicks = v.host().kicks.load(std::sync::atomic::Ordering::SeqCst);
    let before = v.host().counter();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus);
    let armed = v.host().timer_arms.lock().unwrap()[0].expect("a host timer armed");
    let latency = crate::mmio_shortcut::QUEUE_LATENCY_MS * 1_000_000;
    assert!(
        (before + latency..before + latency + 1_000_000).contains(&armed),
        "armed at {armed}, queued after {before}"
    );
    assert_eq!(
        v.host().kicks.load(std::sync::atomic::Ordering::SeqCst),
        kicks + 1,
        "the running vCPU was IPIed"
    );
    assert_eq!(take_stores(&v), [(MMIO, 1, 0x61)]);
    // Nothing queued: the next run arms no timer (the last one went with its run).
    let arms = v.host().timer_arms.lock().unwrap().len();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(v.host().timer_arms.lock().unwrap().len(), arms);
}

/// A register that holds what the guest stored (both flags): loads read the value,
/// each store is queued as any and makes the value the stored bits under the mask; its
/// loads are never the EL2 code's (another vCPU's store could have changed it since
/// the rows were copied).
#[test]
fn a_mirrored_register_reads_back_what_was_stored() {
    let v = guest();
    let mut m = VmMmioShortcut {
        gpa: MMIO,
        value: 0x1_0301,
        flags: MMIO_ANSWER_LOADS | MMIO_BUFFER_STORES,
        mask: 0xffff,
        _pad: 0,
    };
    vmio(&v, "g", ioctl::VM_SET_MMIO_SHORTCUT, &mut m).unwrap();
    let (code, got) = load_once(&v, MMIO, load_iss(2, false, false, 3), 3);
    assert_eq!(
        (code, got),
        (ExitCode::Smccc, 0x301),
        "the value under the mask"
    );
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(2, 1)), MMIO).with(|c| c.x[1] = 0x1_2345),
    );
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus, "the store is queued");
    assert_eq!(take_stores(&v), [(MMIO, 4, 0x1_2345)], "queued as stored");
    run(&v, "g", 0).unwrap();
    let (code, got) = load_once(&v, MMIO, load_iss(1, false, false, 3), 3);
    assert_eq!(
        (code, got),
        (ExitCode::Smccc, 0x2345),
        "the store, under the mask"
    );
    assert_eq!(entries(&v).last().unwrap().el2_answers.mmio_rows, 0);
}

#[test]
fn mmio_stores_including_wzr() {
    let v = guest();
    for (sas, rt) in [(0u32, 31u32), (1, 9), (2, 31), (3, 0)] {
        let iss = dabt::ISV | dabt::WNR | (sas << dabt::SAS_SHIFT) | (rt << dabt::SRT_SHIFT) | 0x06;
        v.host().push(
            Scripted::abort(mk(ec::DABT_LOW, true, iss), MMIO + 0x20).with(|c| c.x[9] = 0xabcd),
        );
        let (e, _) = run(&v, "g", 0).unwrap();
        // SAFETY: test: the INST_EMUL member.
        let ie = unsafe { e.u.inst_emul };
        assert!(ie.vie.is_write());
        assert_eq!(ie.vie.access_size(), 1 << sas);
        assert_eq!(ie.gpa, MMIO + 0x20);
        let val = get_reg(&v, "g", 0, ie.vie.reg as u32).unwrap();
        match rt {
            31 => assert_eq!(
                (ie.vie.reg, val),
                (reg::VM_REG_LAST as i32, 0),
                "wzr stores zero"
            ),
            9 => assert_eq!(val, 0xabcd),
            _ => {}
        }
    }
}

#[test]
fn aborts_nobody_can_emulate_are_injected() {
    let v = guest();
    let vbar = RAM + 0x8000;
    let far = |c: &VcpuContext| c.el1.far_el1;
    // No syndrome (ISV = 0), on MMIO.
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, 0x07), MMIO).with(move |c| {
            c.el1.vbar_el1 = vbar;
            c.pc = RAM + 0x40;
        }),
    );
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        exitcode(&e),
        ExitCode::Smccc,
        "the abort never reached userspace"
    );
    let c = entries(&v)[1];
    assert_eq!(c.pc, vbar + 0x200, "current EL, SP_ELx vector");
    assert_eq!(c.el1.elr_el1, RAM + 0x40);
    assert_eq!(c.el1.spsr_el1, 0x3c5);
    assert_eq!(
        c.el1.esr_el1,
        mk(ec::DABT_CUR, true, dabt::fsc::SYNC_EXTERNAL)
    );
    assert_eq!(far(&c) & 0xfff, MMIO & 0xfff);
    assert_eq!(c.pstate, 0x3c5);
    assert_eq!(stat(&v, "g", Stat::NoSyndromeAbort), 1);
    // Instruction fetch from MMIO, from EL0: lower-EL instruction abort.
    v.host()
        .push(Scripted::abort(mk(ec::IABT_LOW, true, 0x06), MMIO).with(|c| c.pstate = 0));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let c = entries(&v)[3];
    assert_eq!(
        c.el1.esr_el1,
        mk(ec::IABT_LOW, true, dabt::fsc::SYNC_EXTERNAL)
    );
    assert_eq!(c.pc, vbar + 0x400);
    // The guest's own table walk through MMIO.
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, dabt::S1PTW | dabt::ISV | 0x05), MMIO)
            .with(|c| c.pstate = 0x3c5),
    );
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        entries(&v)[5].el1.esr_el1,
        mk(ec::DABT_CUR, true, dabt::fsc::SYNC_EXTERNAL)
    );
    // Past the IPA space: address size fault.
    v.host().push(Scripted::abort(
        mk(ec::DABT_LOW, true, dabt::ISV | 0x04),
        (1 << 39) + 0x1000,
    ));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        entries(&v)[7].el1.esr_el1,
        mk(ec::DABT_CUR, true, dabt::fsc::ADDR_SIZE_L0)
    );
    // Cache maintenance on MMIO: skipped.
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, dabt::CM | dabt::WNR | 0x07), MMIO)
            .with(|c| c.pc = RAM + 0x80),
    );
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[9].pc, RAM + 0x84);
    assert_eq!(
        entries(&v)[9].el1.esr_el1,
        entries(&v)[8].el1.esr_el1,
        "nothing injected"
    );
}

#[test]
fn guest_ram_faults_stay_in_the_kernel() {
    let v = guest();
    // A translation fault on mapped RAM (a stale TLB entry, say): re-entered as is.
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, dabt::ISV | 0x07), RAM + 0x2345)
            .with(|c| c.pc = RAM + 0x10),
    );
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc);
    let en = entries(&v);
    assert_eq!(en[1].pc, RAM + 0x10, "retried, not advanced");
    assert_eq!(en[1].el1.esr_el1, 0, "nothing injected");
    assert_eq!(stat(&v, "g", Stat::RamFault), 1);
    // A write to read-only memory and a fetch from no-execute memory: aborts.
    alloc_seg(&v, "g", 1, 1 << 20).unwrap();
    mmap(&v, "g", 0x1_0000_0000, 1, 0, 1 << 20, PROT_READ).unwrap();
    v.host().push(Scripted::abort(
        mk(ec::DABT_LOW, true, dabt::ISV | dabt::WNR | 0x0f),
        0x1_0000_0008,
    ));
    v.host()
        .push(Scripted::abort(mk(ec::IABT_LOW, true, 0x0f), 0x1_0000_0000));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let en = entries(&v);
    assert_eq!(
        en[3].el1.esr_el1,
        mk(ec::DABT_CUR, true, dabt::fsc::SYNC_EXTERNAL)
    );
    assert_eq!(
        en[4].el1.esr_el1,
        mk(ec::IABT_CUR, true, dabt::fsc::SYNC_EXTERNAL)
    );
    // A permission fault whose IPA is no mapping's (HPFAR unknown): an abort, not MMIO.
    v.host().push(Scripted::abort(
        mk(ec::DABT_LOW, true, dabt::ISV | dabt::WNR | 0x0f),
        MMIO,
    ));
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    let en = entries(&v);
    assert_eq!(
        en[en.len() - 1].el1.esr_el1,
        mk(ec::DABT_CUR, true, dabt::fsc::SYNC_EXTERNAL)
    );
    // A guest that keeps retrying an access it gets aborts for is the guest's business.
    for _ in 0..70 {
        v.host()
            .push(Scripted::abort(mk(ec::DABT_LOW, true, 0x07), MMIO));
    }
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    // A fault on RAM that keeps coming back ends VM_RUN with EFAULT instead of spinning.
    for _ in 0..70 {
        v.host().push(Scripted::abort(
            mk(ec::DABT_LOW, true, dabt::ISV | 0x07),
            RAM + 0x3000,
        ));
    }
    assert_eq!(run(&v, "g", 0).err(), Some(Errno::EFAULT));
}

#[test]
fn system_registers_in_kernel() {
    let v = guest();
    let mrs_pfr0 = sys_iss(sysreg::ID_AA64PFR0_EL1, 5, true);
    let msr_oslar = sys_iss(sysreg::OSLAR_EL1, 1, false);
    let mrs_dbg = sys_iss(sysreg::dbgbcr_el1(2), 6, true);
    v.host()
        .push(Scripted::sync(mk(ec::SYS64, true, mrs_pfr0)).with(|c| c.x[6] = 99));
    v.host()
        .push(Scripted::sync(mk(ec::SYS64, true, msr_oslar)));
    v.host().push(Scripted::sync(mk(ec::SYS64, true, mrs_dbg)));
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc);
    let en = entries(&v);
    assert_eq!(en[1].x[5] & 0xffff, 0x0011, "sanitised ID_AA64PFR0");
    assert_eq!((en[1].pc, en[2].pc, en[3].pc), (RAM + 4, RAM + 8, RAM + 12));
    assert_eq!(en[3].x[6], 0, "debug registers read as zero");
    assert_eq!(stat(&v, "g", Stat::SysRegKernel), 3);
    // A write to an ID register is UNDEFINED: injected.
    v.host().push(Scripted::sync(mk(
        ec::SYS64,
        true,
        sys_iss(sysreg::ID_AA64ISAR0_EL1, 1, false),
    )));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[5].el1.esr_el1, esr::ESR_UNDEFINED);
}

#[test]
fn unknown_registers_go_to_userspace_and_may_be_refused() {
    let v = guest();
    let iss = sys_iss(sysreg::PMCR_EL0, 3, true);
    v.host()
        .push(Scripted::sync(mk(ec::SYS64, true, iss)).with(|c| {
            c.pc = RAM + 0x20;
            c.el1.vbar_el1 = RAM + 0x800;
        }));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::RegEmul);
    assert_eq!(e.pc, RAM + 0x20);
    // SAFETY: test: the REG_EMUL member.
    let vre = unsafe { e.u.reg_emul.vre };
    assert_eq!(
        (vre.inst_syndrome, vre.is_write(), vre.reg),
        (iss, false, 3)
    );
    // Userspace answers UNDEFINED: the exception returns to the MRS itself.
    let mut x = VmException {
        cpuid: 0,
        esr: esr::ESR_UNDEFINED,
        far: 0,
        ..Default::default()
    };
    vmio(&v, "g", ioctl::VM_INJECT_EXCEPTION, &mut x).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let c = entries(&v)[1];
    assert_eq!(
        (c.el1.elr_el1, c.pc, c.el1.esr_el1),
        (RAM + 0x20, RAM + 0xa00, esr::ESR_UNDEFINED)
    );
    // An MSR from xzr that userspace emulates: register 40 reads zero, PC advances.
    let iss = sys_iss(SysReg::new(3, 3, 9, 12, 0), 31, false);
    v.host()
        .push(Scripted::sync(mk(ec::SYS64, true, iss)).with(|c| c.pc = RAM + 0x40));
    let (e, _) = run(&v, "g", 0).unwrap();
    // SAFETY: test: the REG_EMUL member.
    let vre = unsafe { e.u.reg_emul.vre };
    assert_eq!((vre.is_write(), vre.reg), (true, reg::VM_REG_LAST as i32));
    assert_eq!(get_reg(&v, "g", 0, vre.reg as u32).unwrap(), 0);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[3].pc, RAM + 0x44);
    // Setting the PC cancels the advance.
    v.host()
        .push(Scripted::sync(mk(ec::SYS64, true, iss)).with(|c| c.pc = RAM + 0x60));
    run(&v, "g", 0).unwrap();
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM + 0x1000).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[5].pc, RAM + 0x1000);
}

#[test]
fn wfi_sleeps_until_something_happens() {
    let v = guest();
    let wfi = || Scripted::sync(mk(ec::WFX, true, 0));
    // An interrupt already pending: straight back in, past the WFI.
    v.set_irq_pending(b"g", 0, true).unwrap();
    v.host().push(wfi());
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[1].pc, RAM + 4);
    v.set_irq_pending(b"g", 0, false).unwrap();
    // The virtual timer 20 ms ahead: sleeps about that long.
    let now = v.host().counter();
    v.host().push(wfi().with(move |c| {
        c.timer.cntv_ctl_el0 = 1;
        c.timer.cntv_cval_el0 = now - c.timer.cntvoff_el2 + 20_000_000;
    }));
    v.host().push(hvc());
    let t = std::time::Instant::now();
    run(&v, "g", 0).unwrap();
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(19),
        "{:?}",
        t.elapsed()
    );
    // A compare value at the end of time: the vCPU sleeps (no spinning on a wrapped
    // deadline) until something else wakes it.
    v.host().push(wfi().with(|c| {
        c.timer.cntv_ctl_el0 = 1;
        c.timer.cntv_cval_el0 = u64::MAX;
    }));
    v.host().push(hvc());
    let sleeps = v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let asleep = !t.is_finished();
        let calls = v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst) - sleeps;
        // Wake it before asserting, so a failure does not leave the thread behind.
        v.set_irq_pending(b"g", 0, true).unwrap();
        let e = t.join().unwrap().unwrap().0;
        assert!(asleep, "still asleep after 50 ms");
        assert!(calls <= 2, "slept once, did not spin: {calls} sleeps");
        assert_eq!(exitcode(&e), ExitCode::Smccc);
    });
    v.set_irq_pending(b"g", 0, false).unwrap();
    // HALT_EXIT: WFI goes to userspace, and resumes after it.
    let mut c = VmCapability {
        cpuid: 0,
        captype: cap::HALT_EXIT,
        capval: 1,
        allcpus: 0,
    };
    vmio(&v, "g", ioctl::VM_SET_CAPABILITY, &mut c).unwrap();
    v.host().push(wfi().with(|c| c.pc = RAM + 0x100));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!((exitcode(&e), e.pc), (ExitCode::Wfi, RAM + 0x100));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v).last().unwrap().pc, RAM + 0x104);
    assert_eq!(stat(&v, "g", Stat::Wfi), 4);
}

#[test]
fn suspend_and_destroy_reach_a_sleeping_vcpu() {
    let v = guest();
    v.host().push(Scripted::sync(mk(ec::WFX, true, 0)));
    let sleeps = v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        wait_asleep(&v, sleeps);
        let mut sus = VmSuspend {
            how: vmm_sys::exit::SuspendHow::Poweroff as i32,
        };
        vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus).unwrap();
        let (e, set) = t.join().unwrap().unwrap();
        assert_eq!(exitcode(&e), ExitCode::Suspended);
        // SAFETY: test: the SUSPENDED member.
        assert_eq!(unsafe { e.u.suspended.how }, 2);
        assert_eq!(set, 1, "suspended cpuset copied out");
        assert_eq!(
            vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus),
            Err(Errno::EALREADY)
        );
    });
    assert_eq!(
        run(&v, "g", 0).err(),
        Some(Errno::EINVAL),
        "a suspended vCPU stays out"
    );
    // Destroy while a vCPU sleeps in WFI (a destroy before the run has looked the VM
    // up would be a plain ENOENT: wait for the sleep).
    setup(&v, "d", 2);
    v.host().push(Scripted::sync(mk(ec::WFX, true, 0)));
    let sleeps = v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "d", 0));
        wait_asleep(&v, sleeps);
        destroy(&v, "d").unwrap();
        let (e, _) = t.join().unwrap().unwrap();
        // SAFETY: test: the SUSPENDED member.
        let how = unsafe { e.u.suspended.how };
        assert_eq!((exitcode(&e), how), (ExitCode::Suspended, 4));
    });
    // Bad suspend kinds.
    let mut sus = VmSuspend { how: 0 };
    assert_eq!(
        vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus),
        Err(Errno::EINVAL)
    );
    sus.how = 5;
    assert_eq!(
        vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus),
        Err(Errno::EINVAL)
    );
}

#[test]
fn interrupts_kicks_signals_and_other_exits() {
    let v = guest();
    v.host().push(Scripted::irq());
    v.host().push(Scripted::irq());
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        exitcode(&e),
        ExitCode::Smccc,
        "host interrupts never reach userspace"
    );
    assert_eq!(stat(&v, "g", Stat::HostIrq), 2);
    // A kick from another thread while the guest runs (the fake's guest idles with
    // interrupt exits when nothing is scripted).
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        v.kick_vcpu(b"g", 0).unwrap();
        let (e, _) = t.join().unwrap().unwrap();
        assert_eq!(exitcode(&e), ExitCode::Bogus);
    });
    assert_eq!(stat(&v, "g", Stat::Kicks), 1);
    // A pending signal: BOGUS before entering.
    v.host()
        .signal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let n = entries(&v).len();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus);
    assert_eq!(entries(&v).len(), n, "not entered");
    v.host()
        .signal
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Unclassified exits: HYP with the raw syndrome and the exception kind.
    v.host().push(Scripted {
        far: 0x1234,
        hpfar: 0x50,
        ..Scripted::sync(mk(ec::UNKNOWN, true, 0))
    });
    let (e, _) = run(&v, "g", 0).unwrap();
    // SAFETY: test: the HYP member.
    let h = unsafe { e.u.hyp };
    assert_eq!(exitcode(&e), ExitCode::Hyp);
    assert_eq!(
        (h.exception_nr, h.esr_el2, h.far_el2, h.hpfar_el2),
        (excp::EL1_SYNC, mk(ec::UNKNOWN, true, 0), 0x1234, 0x50)
    );
    v.host().push(Scripted {
        kind: excp::EL1_ERROR,
        ..Scripted::sync(0)
    });
    let (e, _) = run(&v, "g", 0).unwrap();
    // SAFETY: test: the HYP member.
    let nr = unsafe { e.u.hyp.exception_nr };
    assert_eq!((exitcode(&e), nr), (ExitCode::Hyp, excp::EL1_ERROR));
    // BRK with the BRK-exit capability (MDCR_EL2.TDE in the context).
    let mut c = VmCapability {
        cpuid: 0,
        captype: cap::BRK_EXIT,
        capval: 1,
        allcpus: 0,
    };
    vmio(&v, "g", ioctl::VM_SET_CAPABILITY, &mut c).unwrap();
    v.host().push(Scripted::sync(mk(ec::BRK64, true, 0)));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Brk);
    assert_ne!(
        entries(&v).last().unwrap().el2.mdcr_el2 & vmm_sys::arm64::regs::mdcr::TDE,
        0
    );
}

#[test]
fn run_validation_and_debug_exits() {
    let v = guest();
    assert_eq!(run(&v, "g", 1).err(), Some(Errno::EINVAL), "inactive vCPU");
    assert_eq!(run(&v, "g", 16).err(), Some(Errno::EINVAL));
    assert_eq!(run(&v, "g", -3).err(), Some(Errno::EINVAL));
    // The exit cannot be copied out.
    v.host().push(hvc());
    let mut req = VmRun {
        cpuid: 0,
        vm_exit: 0x42,
        ..Default::default()
    };
    assert_eq!(vmio(&v, "g", ioctl::VM_RUN, &mut req), Err(Errno::EFAULT));
    // Held for the debugger: DEBUG exit with the debug set.
    let mut a = VmActivateCpu { vcpuid: 0 };
    vmio(&v, "g", ioctl::VM_SUSPEND_CPU, &mut a).unwrap();
    let (e, set) = run(&v, "g", 0).unwrap();
    assert_eq!((exitcode(&e), set), (ExitCode::Debug, 1));
    vmio(&v, "g", ioctl::VM_RESUME_CPU, &mut a).unwrap();
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
}

#[test]
fn guest_memory_is_synced_before_first_entry() {
    let v = guest();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let synced = v
        .host()
        .synced_bytes
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(synced, 4 << 20);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        v.host()
            .synced_bytes
            .load(std::sync::atomic::Ordering::SeqCst),
        synced
    );
    // New memory mapped: everything is made coherent again before the next entry.
    alloc_seg(&v, "g", 1, 1 << 20).unwrap();
    mmap(&v, "g", 0x1_0000_0000, 1, 0, 1 << 20, PROT_ALL).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let now = v
        .host()
        .synced_bytes
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(now, synced + (4 << 20) + (1 << 20));
}

#[test]
fn reinit_resets_vcpus_and_keeps_memory() {
    let v = guest();
    let (_, va, _) = v.gpa_to_pa(b"g", RAM + 0x10).unwrap();
    // SAFETY: test: guest RAM in the fake memory.
    unsafe { va.write(0x77) };
    set_reg(&v, "g", 0, 3, 33).unwrap();
    let mut none = [0u8; 0];
    let reinit = |v: &Vmm<crate::fake::FakeHost>, b: &mut [u8]| {
        v.dispatch(DeviceRef::Vm(b"g"), ioctl::VM_REINIT, b)
    };
    assert_eq!(
        reinit(&v, &mut none),
        Err(Errno::EBUSY),
        "vCPU 0 active, not suspended"
    );
    let mut sus = VmSuspend { how: 1 };
    vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus).unwrap();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Suspended);
    reinit(&v, &mut none).unwrap();
    assert_eq!(get_reg(&v, "g", 0, 3).unwrap(), 0, "registers reset");
    assert_eq!(get_reg(&v, "g", 0, reg::VM_REG_GUEST_CPSR).unwrap(), 0x3c5);
    // SAFETY: test: guest RAM in the fake memory.
    assert_eq!(unsafe { va.read() }, 0x77, "memory contents stay");
    assert!(
        v.gpa_to_pa(b"g", RAM).is_some(),
        "system memory stays mapped"
    );
    assert_eq!(
        run(&v, "g", 0).err(),
        Some(Errno::EINVAL),
        "no vCPU active after reinit"
    );
    activate(&v, "g", 0).unwrap();
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
}

#[test]
fn two_vms_have_their_own_tables_and_vmids() {
    let v = vmm();
    setup(&v, "a", 2);
    setup(&v, "b", 2);
    v.host().push(hvc());
    run(&v, "a", 0).unwrap();
    v.host().push(hvc());
    run(&v, "b", 0).unwrap();
    let en = entries(&v);
    let (ta, tb) = (en[0].el2.vttbr_el2, en[1].el2.vttbr_el2);
    assert_ne!(ta >> 48, tb >> 48, "different VMIDs");
    assert_ne!(
        ta & vmm_sys::arm64::regs::s2::OA_MASK,
        tb & vmm_sys::arm64::regs::s2::OA_MASK
    );
    let (pa_a, _, _) = v.gpa_to_pa(b"a", RAM).unwrap();
    let (pa_b, _, _) = v.gpa_to_pa(b"b", RAM).unwrap();
    assert_ne!(pa_a, pa_b);
    assert_eq!(v.host().walk(ta, RAM).unwrap().0, pa_a);
    assert_eq!(v.host().walk(tb, RAM).unwrap().0, pa_b);
    assert!(
        v.host().walk(ta, RAM + (2 << 20)).is_none(),
        "nothing past a's RAM"
    );
}

#[test]
fn unload_waits_for_a_destroy_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let v = guest();
    // The guest stays in until released (the fake cannot interrupt a scripted step), so
    // the destroy below has to wait for it. Released after 20 s at the latest, so a
    // failing assertion does not leave the runner stuck.
    let (entered, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (e2, r2) = (entered.clone(), release.clone());
    v.host().push(hvc().with(move |c| {
        e2.store(true, Ordering::SeqCst);
        let t = std::time::Instant::now();
        while !r2.load(Ordering::SeqCst) && t.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        c.pc += 4;
    }));
    std::thread::scope(|s| {
        let runner = s.spawn(|| run(&v, "g", 0));
        wait_until("the guest runs", || entered.load(Ordering::SeqCst));
        let destroyer = s.spawn(|| destroy(&v, "g"));
        wait_until("the destroy unlisted the VM", || v.vm_count() == 0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(!destroyer.is_finished(), "the destroy waits for the run");
            assert_eq!(
                v.shutdown(),
                Err(Errno::EBUSY),
                "its VMID and tables are still live"
            );
            assert_eq!(create(&v, "g"), Ok(()), "the name is free again");
            destroy(&v, "g").unwrap();
        }));
        release.store(true, Ordering::SeqCst);
        runner.join().unwrap().unwrap();
        destroyer.join().unwrap().unwrap();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    });
    v.shutdown().unwrap();
    assert_eq!(v.host().pages_in_use(), 0);
}

#[test]
fn stats_are_readable_while_the_vcpu_runs() {
    let v = guest();
    v.host().push(Scripted::irq());
    v.host().push(Scripted::sync(mk(ec::WFX, true, 0)));
    let sleeps = v.host().sleeps.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        wait_asleep(&v, sleeps);
        // The vCPU sleeps in WFI inside VM_RUN: its registers are busy, its counters not.
        assert_eq!(get_reg(&v, "g", 0, 0), Err(Errno::EBUSY));
        let (irq, wfi, exits) = (
            stat(&v, "g", Stat::HostIrq),
            stat(&v, "g", Stat::Wfi),
            stat(&v, "g", Stat::Exits),
        );
        v.host().push(hvc());
        v.set_irq_pending(b"g", 0, true).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!((irq, wfi, exits), (1, 1, 2));
    });
    assert_eq!(stat(&v, "g", Stat::Exits), 3);
    // VM_REINIT clears them, as FreeBSD's vCPU re-initialisation does.
    let mut sus = VmSuspend { how: 1 };
    vmio(&v, "g", ioctl::VM_SUSPEND, &mut sus).unwrap();
    run(&v, "g", 0).unwrap();
    v.dispatch(DeviceRef::Vm(b"g"), ioctl::VM_REINIT, &mut [])
        .unwrap();
    assert_eq!(stat(&v, "g", Stat::Exits), 0);
}

/// A guest that faults on the same page of its RAM without end ends its VM_RUN with
/// EFAULT each time; the kernel logs that once a second at most and counts the rest.
#[test]
fn a_guest_fault_loop_is_logged_once_a_second() {
    let v = guest();
    let lines = |v: &Vmm<FakeHost>| {
        v.host()
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("faults repeatedly"))
            .count()
    };
    for round in 0..3 {
        for _ in 0..=super::super::run::MAX_RAM_FAULT_REPEAT + 1 {
            v.host().push(Scripted::abort(
                mk(ec::DABT_LOW, true, dabt::ISV | 0x07),
                RAM + 0x2345,
            ));
        }
        assert_eq!(
            run(&v, "g", 0).map(|_| ()),
            Err(Errno::EFAULT),
            "round {round}"
        );
        v.host().script.lock().unwrap().clear();
    }
    assert_eq!(lines(&v), 1, "one line for three loops within a second");
    assert_eq!(stat(&v, "g", Stat::LogSuppressed), 2);
}

/// Accesses the EL2 code answered in the guest's world (`El2Answers::answered`, which
/// the fake's guest sets here as the EL2 code would) count as exits and as
/// "answered at EL2", and the counter starts again from zero at the next entry.
#[test]
fn accesses_answered_at_el2_are_counted() {
    let v = guest();
    let en0 = stat(&v, "g", Stat::Exits);
    v.host().push(hvc().with(|c| {
        c.el2_answers.answered = 5;
        c.pc += 4
    }));
    v.host().push(hvc());
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    assert_eq!(stat(&v, "g", Stat::SysRegEl2), 5);
    assert_eq!(stat(&v, "g", Stat::Exits) - en0, 2 + 5);
    let en = entries(&v);
    assert_eq!(en[1].el2_answers.answered, 0, "taken after the exit");
    assert_eq!(en[1].el2_answers.enabled, 1, "the core fills the table");
    assert_eq!(en[1].el2_answers.oslsr, crate::sysemul::OSLSR_VALUE);
}

/// The EL2 code queues stores to the first queued registers itself (never a mirrored
/// one, whose value the run loop keeps): the entry carries them in the context's rows
/// with the EL2 address of the VM's queue, mapped for EL2. It adds only to a queue the
/// core opened (with the deadline set), behind the core's stores; userspace takes them
/// all in order at the BOGUS exit before the next one, and they count as queued and as
/// handled at EL2.
#[test]
fn queued_device_registers_reach_the_el2_rows_and_share_the_queue() {
    use vmm_sys::hyp::El2Answer;
    use vmm_sys::mmio_queue::MmioStoreQueue;
    let v = guest();
    set_answer(&v, MMIO, 0, MMIO_BUFFER_STORES).unwrap();
    set_answer(&v, MMIO + 8, 0, MMIO_ANSWER_LOADS | MMIO_BUFFER_STORES).unwrap();
    set_answer(&v, MMIO + 0x10, 0, MMIO_BUFFER_STORES).unwrap();
    let host = v.host() as *const crate::fake::FakeHost as usize;
    // What the EL2 code does with a `strb w3` to MMIO, x3 = `value`.
    let el2_store = move |c: &mut VcpuContext, value: u64| {
        // SAFETY: test: `v` (and its host) outlives every run below.
        let h = unsafe { &*(host as *const crate::fake::FakeHost) };
        let q = h.pa_to_va(c.el2_answers.store_queue).unwrap();
        // SAFETY: test: the VM's queue page, which the core reaches the same way.
        let q = unsafe { q.cast::<MmioStoreQueue>().as_ref() };
        c.x[3] = value;
        let esr = mk(ec::DABT_LOW, true, store_iss(0, 3));
        let a = c.el2_answers.answer_store(esr, || MMIO, &c.x, || Some(q));
        if a.is_some() {
            c.el2_answers.answered += 1;
            c.el2_answers.queued_mmio += 1;
            c.pc += 4;
        }
        a
    };
    // Closed before the first store: the EL2 code leaves it to the core.
    v.host().push(
        Scripted::abort(mk(ec::DABT_LOW, true, store_iss(0, 3)), MMIO).with(move |c| {
            assert_eq!(el2_store(c, 0x41), None, "closed: the core's");
            c.pc = RAM + 0x100;
            c.x[3] = 0x41;
        }),
    );
    v.host().push(hvc().with(move |c| {
        assert_eq!(el2_store(c, 0x42), Some(El2Answer::Ignored));
        assert_eq!(el2_store(c, 0x43), Some(El2Answer::Ignored));
    }));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Bogus, "stores wait: BOGUS first");
    let a = entries(&v).last().unwrap().el2_answers;
    assert_eq!(a.store_rows, 2, "the mirrored register is not a row");
    assert_eq!(a.store_ipa[..2], [MMIO, MMIO + 0x10]);
    assert_ne!(a.store_queue, 0);
    assert!(v.host().el2_mapped.lock().unwrap().contains(&a.store_queue));
    assert_eq!(
        take_stores(&v),
        [(MMIO, 1, 0x41), (MMIO, 1, 0x42), (MMIO, 1, 0x43)]
    );
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
    assert_eq!(stat(&v, "g", Stat::MmioQueued), 3);
    assert_eq!(stat(&v, "g", Stat::MmioEl2), 2);
    // Taken: closed again, the next store is the core's.
    v.host().push(hvc().with(move |c| {
        assert_eq!(el2_store(c, 0x44), None, "closed after the take");
    }));
    assert_eq!(exitcode(&run(&v, "g", 0).unwrap().0), ExitCode::Smccc);
}

/// The EL2 code answers the first answered device registers itself: the entry after a
/// change carries them in the context's rows (never a queued register), and what it
/// answered (`answered_mmio`) counts as exits and as answered MMIO loads.
#[test]
fn answered_device_registers_reach_the_el2_rows() {
    let v = guest();
    set_answer(&v, MMIO, 0x90, MMIO_ANSWER_LOADS).unwrap();
    set_answer(&v, MMIO + 8, 0, MMIO_BUFFER_STORES).unwrap();
    let en0 = stat(&v, "g", Stat::Exits);
    v.host().push(hvc().with(|c| {
        // As the EL2 code counts: every answer, and of them the device loads.
        c.el2_answers.answered = 5;
        c.el2_answers.answered_mmio = 3;
        c.pc += 4
    }));
    run(&v, "g", 0).unwrap();
    let a = entries(&v).last().unwrap().el2_answers;
    assert_eq!(a.mmio_rows, 1);
    assert_eq!((a.mmio[0].ipa, a.mmio[0].value), (MMIO, 0x90));
    assert_eq!(stat(&v, "g", Stat::MmioAnswered), 3);
    assert_eq!(stat(&v, "g", Stat::MmioEl2), 3);
    assert_eq!(stat(&v, "g", Stat::SysRegEl2), 2);
    assert_eq!(stat(&v, "g", Stat::Exits) - en0, 1 + 5);
    // A new value, then the next entry; a full table leaves the rest to the run loop.
    set_answer(&v, MMIO, 0x80, MMIO_ANSWER_LOADS).unwrap();
    for i in 1..8u64 {
        set_answer(&v, MMIO + 0x100 * i, i as u32, MMIO_ANSWER_LOADS).unwrap();
    }
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let a = entries(&v).last().unwrap().el2_answers;
    assert_eq!(a.mmio_rows, vmm_sys::hyp::EL2_MMIO_ROWS as u64);
    assert_eq!((a.mmio[0].ipa, a.mmio[0].value), (MMIO, 0x80));
    assert_eq!(a.answered_mmio, 0, "taken after the exit");
    let (code, got) = load_once(&v, MMIO + 0x700, load_iss(2, false, false, 3), 3);
    assert_eq!(
        (code, got),
        (ExitCode::Smccc, 7),
        "past the rows: the run loop answers"
    );
}

#[test]
fn wfe_traps_only_where_the_host_asks_and_yields_when_others_wait() {
    use std::sync::atomic::Ordering::SeqCst;
    use vmm_sys::arm64::regs::hcr;
    let wfe = |pc: u64| Scripted::sync(mk(ec::WFX, true, 1)).with(move |c| c.pc = pc);
    // By default WFE runs in the guest, as under FreeBSD's vmm.
    let v = guest();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v)[0].el2.hcr_el2 & hcr::TWE, 0);
    // A host whose vCPUs share CPUs traps it: past the WFE, back into the guest.
    let v = vmm();
    v.host().trap_wfe.store(true, SeqCst);
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v.host().push(wfe(RAM + 0x10));
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc);
    assert_ne!(entries(&v)[0].el2.hcr_el2 & hcr::TWE, 0);
    assert_eq!(entries(&v)[1].pc, RAM + 0x14);
    assert_eq!(
        (stat(&v, "g", Stat::Wfe), stat(&v, "g", Stat::WfeYield)),
        (1, 0)
    );
    // Others wait for the CPU: VM_RUN returns (BOGUS) past the WFE, and the next
    // VM_RUN resumes there.
    v.host().wfe_yield.store(true, SeqCst);
    v.host().push(wfe(RAM + 0x20));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(
        (exitcode(&e), e.pc, e.inst_length),
        (ExitCode::Bogus, RAM + 0x24, 0)
    );
    v.host().wfe_yield.store(false, SeqCst);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(entries(&v).last().unwrap().pc, RAM + 0x24);
    assert_eq!(
        (stat(&v, "g", Stat::Wfe), stat(&v, "g", Stat::WfeYield)),
        (2, 1)
    );
}
