//! Exit decode and handling: a guest that exits with arbitrary exception kinds, ESR,
//! FAR and HPFAR values and arbitrary register state (PSTATE only in the modes a guest
//! can be in), through the core's VM_RUN over the fake host. Invariants: nothing panics;
//! every entry after an exit the core handled or returned runs the guest at EL0 or EL1
//! in AArch64 state (never EL2), with its PC where it was, past the instruction, or at
//! one of its own exception vectors (VBAR_EL1 + 0x000..0x780).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_core::fake::Scripted;
use vmm_fuzz::{core, destroy, run, setup, RAM};
use vmm_sys::arm64::esr;
use vmm_sys::arm64::regs::pstate;
use vmm_sys::hyp::{excp, VcpuContext};

/// What one scripted exit leaves in the context: the PC it reported, and the vector
/// base the guest had.
#[derive(Clone, Copy)]
struct Reported {
    pc: u64,
    vbar: u64,
}

fn exit(u: &mut Unstructured<'_>) -> Result<(Scripted, Reported)> {
    let kind = match u.int_in_range(0u8..=15)? {
        0..=9 => excp::EL1_SYNC,
        10 => excp::EL1_IRQ,
        11 => excp::MAINT_IRQ,
        12 => excp::EL1_ERROR,
        13 => excp::EL2_SYNC,
        14 => excp::REENTER,
        _ => u.arbitrary()?,
    };
    let mut esr_v: u64 = u.arbitrary()?;
    // WFI/WFE sleep in the kernel until an interrupt the fake never raises: left to the
    // unit tests and the testbed.
    if (esr_v >> 26) & 0x3f == u64::from(esr::ec::WFX) {
        esr_v ^= 1 << 26;
    }
    let far: u64 = u.arbitrary()?;
    let hpfar: u64 = u.arbitrary()?;
    let pc: u64 = if u.arbitrary()? {
        RAM + (u64::from(u.arbitrary::<u16>()?) << 2)
    } else {
        u.arbitrary()?
    };
    let vbar: u64 = if u.arbitrary()? {
        RAM + 0x800
    } else {
        u.arbitrary()?
    };
    let mode = *u.choose(&[pstate::M_EL0T, pstate::M_EL1T, pstate::M_EL1H])?;
    let flags: u64 = u.arbitrary()?;
    let ps = (flags & !0x1f) | mode;
    let mut regs = [0u64; 31];
    for r in regs.iter_mut() {
        if u.ratio(1u8, 4)? {
            *r = u.arbitrary()?;
        }
    }
    let s = Scripted {
        kind,
        esr: esr_v,
        far,
        hpfar,
        effect: Box::new(move |c: &mut VcpuContext| {
            c.x = regs;
            c.pc = pc;
            c.pstate = ps;
            c.el1.vbar_el1 = vbar;
        }),
        signal: false,
    };
    Ok((s, Reported { pc, vbar }))
}

fn pstate_ok(p: u64) -> bool {
    matches!(p & 0x1f, pstate::M_EL0T | pstate::M_EL1T | pstate::M_EL1H)
}

fn pc_ok(pc: u64, r: Reported) -> bool {
    pc == r.pc
        || pc == r.pc.wrapping_add(4)
        || (pc.wrapping_sub(r.vbar) < 0x800 && pc.wrapping_sub(r.vbar) % 0x80 == 0)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let v = core();
    let base = v.host().pages_in_use();
    if setup(&v, "fx", 2).is_err() {
        panic!("cannot set a VM up");
    }
    for _ in 0..4 {
        let mut pushed = Vec::new();
        {
            let mut q = v.host().script.lock().unwrap();
            q.clear();
            for _ in 0..u.int_in_range(1u8..=6).unwrap_or(1) {
                let Ok((s, r)) = exit(&mut u) else { break };
                q.push_back(s);
                pushed.push(r);
            }
            // A signal ends the run if the core handled every exit itself.
            q.push_back(Scripted::signal(RAM));
        }
        v.host().entries.lock().unwrap().clear();
        let _ = run(&v, "fx", 0);
        let entries = v.host().entries.lock().unwrap().clone();
        for (n, e) in entries.iter().enumerate() {
            assert!(
                pstate_ok(e.pstate),
                "entry {n}: PSTATE {:#x} is not EL0/EL1 AArch64",
                e.pstate
            );
            // Entry n (n >= 1) resumes after this run's exit n - 1.
            if let Some(r) = n.checked_sub(1).and_then(|k| pushed.get(k)) {
                assert!(
                    pc_ok(e.pc, *r),
                    "entry {n}: PC {:#x} is neither the exit's {:#x}, past it, nor a vector of VBAR_EL1 {:#x}",
                    e.pc,
                    r.pc,
                    r.vbar
                );
            }
        }
        if u.is_empty() {
            break;
        }
    }
    if destroy(&v, "fx").is_err() {
        panic!("cannot destroy the VM");
    }
    assert_eq!(
        v.host().pages_in_use(),
        base,
        "the VM's pages are not all freed"
    );
});
