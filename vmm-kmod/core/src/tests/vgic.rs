//! The vGIC and the timers wired into the ioctls and VM_RUN, through the dispatcher
//! with scripted guests on the fake host: attach and injection requests, GIC MMIO and
//! SGI traps emulated in the kernel, list registers filled before each entry, WFI
//! woken by what the guest would take, the physical timer emulated, and the host's
//! virtual-timer PPI held while the guest's timer line is high.

use super::*;
use crate::fake::{FakeHost, Scripted, FAKE_ICH_VTR};
use crate::host::Host;
use crate::stats::Stat;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vmm_sys::arm64::esr::{dabt, ec, esr as mk};
use vmm_sys::arm64::sysreg::{self, SysReg};
use vmm_sys::exit::ExitCode;
use vmm_sys::hyp::VcpuContext;
use vmm_sys::reg;

const GICD: u64 = 0x2f00_0000;
const GICR: u64 = 0x2f10_0000;
const SGI_FRAME: u64 = 0x1_0000;

const LR_EOI: u64 = 1 << 41;
const LR_GROUP1: u64 = 1 << 60;
const LR_PENDING: u64 = 1 << 62;
/// A vINTID with priority 0, group 1, pending.
fn lr_pending_g1(intid: u64) -> u64 {
    intid | LR_GROUP1 | LR_PENDING
}

fn hvc() -> Scripted {
    Scripted::sync(mk(ec::HVC64, true, 0)).with(|c| c.pc += 4)
}

fn entries(v: &Vmm<FakeHost>) -> Vec<VcpuContext> {
    v.host().entries.lock().unwrap().clone()
}

fn last_entry(v: &Vmm<FakeHost>) -> VcpuContext {
    *v.host().entries.lock().unwrap().last().unwrap()
}

fn stat(v: &Vmm<FakeHost>, cpu: i32, s: Stat) -> u64 {
    let mut st = VmStats {
        cpuid: cpu,
        ..Default::default()
    };
    vmio(v, "g", ioctl::VM_STATS, &mut st).unwrap();
    st.statbuf[s as usize]
}

fn descr(dist: u64, redist: u64, ncpus: u64) -> VmVgicDescr {
    VmVgicDescr {
        ver: VmVgicVersion {
            version: 3,
            flags: 0,
        },
        v3_regs: VgicV3Regs {
            dist_start: dist,
            dist_size: 0x1_0000,
            redist_start: redist,
            redist_size: ncpus * 0x2_0000,
        },
    }
}

fn attach(v: &Vmm<FakeHost>, ncpus: u64) -> KResult<()> {
    let mut d = descr(GICD, GICR, ncpus);
    vmio(v, "g", ioctl::VM_ATTACH_VGIC, &mut d)
}

fn irq(v: &Vmm<FakeHost>, cmd: u64, n: u32) -> KResult<()> {
    let mut r = VmIrq { irq: n };
    vmio(v, "g", cmd, &mut r)
}

fn msi(v: &Vmm<FakeHost>, addr: u64, msg: u64) -> KResult<()> {
    let mut r = VmMsi {
        msg,
        addr,
        ..Default::default()
    };
    vmio(v, "g", ioctl::VM_RAISE_MSI, &mut r)
}

/// A VM "g" (4 MiB of RAM at 2 GiB, vCPU 0 active at PC = RAM) on `host`.
fn guest_on(host: FakeHost) -> Vmm<FakeHost> {
    let v = Vmm::new(host, crate::fake::params()).ok().unwrap();
    setup(&v, "g", 4);
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v
}

fn guest() -> Vmm<FakeHost> {
    guest_on(FakeHost::new(64, 2))
}

/// `str w<rt>, [gpa]` with x<rt> = `val`, as the stage-2 abort it causes.
fn store32(gpa: u64, rt: u32, val: u64) -> Scripted {
    let iss = dabt::ISV | dabt::WNR | (2 << dabt::SAS_SHIFT) | (rt << dabt::SRT_SHIFT) | 0x07;
    Scripted::abort(mk(ec::DABT_LOW, true, iss), gpa).with(move |c| {
        if let Some(x) = c.x.get_mut(rt as usize) {
            *x = val;
        }
    })
}

/// A load of 1 << `sas` bytes into x/w<rt> (`sf`), sign-extending with `sse`.
fn load(gpa: u64, sas: u32, sse: bool, sf: bool, rt: u32) -> Scripted {
    let iss = dabt::ISV
        | (sas << dabt::SAS_SHIFT)
        | if sse { dabt::SSE } else { 0 }
        | if sf { dabt::SF } else { 0 }
        | (rt << dabt::SRT_SHIFT)
        | 0x07;
    // The register holds garbage before the load: the kernel must overwrite it.
    Scripted::abort(mk(ec::DABT_LOW, true, iss), gpa).with(move |c| {
        if let Some(x) = c.x.get_mut(rt as usize) {
            *x = 0x5555_5555_5555_5555;
        }
    })
}

fn msr(r: SysReg, rt: u8, val: u64) -> Scripted {
    let iss = r.0 | (u32::from(rt) << 5);
    Scripted::sync(mk(ec::SYS64, true, iss)).with(move |c| c.x[usize::from(rt)] = val)
}

fn mrs(r: SysReg, rt: u8) -> Scripted {
    let iss = r.0 | (u32::from(rt) << 5) | 1;
    Scripted::sync(mk(ec::SYS64, true, iss))
}

fn wfi() -> Scripted {
    Scripted::sync(mk(ec::WFX, true, 0))
}

/// ICH_VMCR_EL2 of a guest that enabled group 1 (VENG1) with priority mask 0xff.
const VMCR_G1_OPEN: u64 = (0xff << 24) | 2;

/// The guest's GIC set-up, as MMIO stores: GICD_CTLR with both groups (Linux writes
/// ARE | G1A | G1 = 0x13), and each SPI in `spis` group 1 and enabled.
fn enable_spis(v: &Vmm<FakeHost>, spis: &[u32]) {
    v.host().push(store32(GICD, 1, 0x13));
    for &n in spis {
        let reg = u64::from(n / 32) * 4;
        let bit = 1u64 << (n % 32);
        v.host().push(store32(GICD + 0x80 + reg, 2, bit)); // IGROUPR
        v.host().push(store32(GICD + 0x100 + reg, 3, bit)); // ISENABLER
    }
}

/// Group 1 and enable for private interrupt `intid` of vCPU `cpu`, through its
/// redistributor's SGI frame.
fn enable_private(v: &Vmm<FakeHost>, cpu: u64, intid: u32) {
    let sgi = GICR + cpu * 0x2_0000 + SGI_FRAME;
    v.host().push(store32(sgi + 0x80, 4, 1 << intid));
    v.host().push(store32(sgi + 0x100, 5, 1 << intid));
}

#[test]
fn attach_version_and_injection_requests() {
    let v = guest();
    // No vGIC yet: device interrupts have nowhere to go.
    assert_eq!(irq(&v, ioctl::VM_ASSERT_IRQ, 33), Err(Errno::EINVAL));
    assert_eq!(irq(&v, ioctl::VM_DEASSERT_IRQ, 33), Err(Errno::EINVAL));
    assert_eq!(msi(&v, GICD + 0x40, 40), Err(Errno::EINVAL));
    let mut ver = VmVgicVersion::default();
    vmio(&v, "g", ioctl::VM_GET_VGIC_VERSION, &mut ver).unwrap();
    assert_eq!((ver.version, ver.flags), (3, 0));
    // Bad descriptions.
    let bad = [
        {
            let mut d = descr(GICD, GICR, 1);
            d.ver.version = 2;
            d
        },
        {
            let mut d = descr(GICD, GICR, 1);
            d.v3_regs.dist_size = 0x2_0000;
            d
        },
        {
            let mut d = descr(GICD, GICR, 1);
            d.v3_regs.redist_size = 0x1_0000; // half a redistributor
            d
        },
        descr(GICD, GICR, 17),                   // more than 16 vCPUs
        descr(GICD, GICR, 0),                    // none
        descr(GICD + 0x1000, GICR, 1),           // unaligned
        descr(GICD, GICD, 1),                    // overlapping windows
        descr(RAM, GICR, 1),                     // over guest RAM
        descr(GICD, RAM + 0x20_0000, 1),         // redistributors over guest RAM
        descr((1 << 39) - 0x1_0000, 1 << 39, 1), // past the IPA space
    ];
    for (i, d) in bad.iter().enumerate() {
        let mut d = *d;
        assert_eq!(
            vmio(&v, "g", ioctl::VM_ATTACH_VGIC, &mut d),
            Err(Errno::EINVAL),
            "case {i}"
        );
    }
    attach(&v, 2).unwrap();
    assert_eq!(attach(&v, 2), Err(Errno::EEXIST));
    // Memory mapped over either window afterwards is refused; next to them is fine.
    alloc_seg(&v, "g", 1, 0x20_0000).unwrap();
    for gpa in [GICD, GICD - 0x1_0000, GICR + 0x2_0000, GICR - 0x1_0000] {
        assert_eq!(
            mmap(&v, "g", gpa, 1, 0, 0x2_0000, PROT_ALL),
            Err(Errno::EINVAL),
            "{gpa:#x}"
        );
    }
    mmap(&v, "g", GICR + 0x4_0000, 1, 0, 0x1_0000, PROT_ALL).unwrap();
    // SPIs only.
    for n in [0, 16, 27, 31, 128, 1020, u32::MAX] {
        assert_eq!(irq(&v, ioctl::VM_ASSERT_IRQ, n), Err(Errno::EINVAL), "{n}");
        assert_eq!(
            irq(&v, ioctl::VM_DEASSERT_IRQ, n),
            Err(Errno::EINVAL),
            "{n}"
        );
    }
    irq(&v, ioctl::VM_ASSERT_IRQ, 32).unwrap();
    irq(&v, ioctl::VM_ASSERT_IRQ, 127).unwrap();
    irq(&v, ioctl::VM_DEASSERT_IRQ, 127).unwrap();
    // MSIs: only the GICD_SETSPI_NSR doorbell, only SPIs.
    assert_eq!(msi(&v, GICD + 0x48, 40), Err(Errno::EINVAL));
    assert_eq!(msi(&v, GICD + 0x40, 20), Err(Errno::EINVAL));
    assert_eq!(msi(&v, GICD + 0x40, 128), Err(Errno::EINVAL));
    msi(&v, GICD + 0x40, 40).unwrap();
}

#[test]
fn gic_mmio_is_emulated_in_the_kernel() {
    let v = guest();
    attach(&v, 1).unwrap();
    // ldr w1, GICD_TYPER: ITLinesNumber 3, IDbits 9, MBIS, one vCPU.
    v.host().push(load(GICD + 0x4, 2, false, false, 1));
    // ldrsw x2, GICR_ICFGR0 (SGIs: always edge, 0xaaaa_aaaa): sign-extended to 64 bits.
    v.host()
        .push(load(GICR + SGI_FRAME + 0xc00, 2, true, true, 2));
    // ldr w3, GICD_PIDR2: ArchRev 3.
    v.host().push(load(GICD + 0xffe8, 2, false, false, 3));
    // ldr x4, GICR_TYPER: affinity 0, Last.
    v.host().push(load(GICR + 0x8, 3, false, true, 4));
    // A store, read back: GICD_CTLR keeps the group enables, ARE and DS read one.
    v.host().push(store32(GICD, 5, 0x13));
    v.host().push(load(GICD, 2, false, false, 6));
    // ldr xzr: discarded, x31 does not exist.
    v.host().push(load(GICD + 0x4, 3, false, true, 31));
    // IPRIORITYR allows bytes: all ones written, five priority bits kept, and
    // ldrsb w7 sign-extends the byte to 32 bits.
    v.host().push(store32(GICD + 0x420, 8, 0xffff_ffff));
    v.host().push(load(GICD + 0x421, 0, true, false, 7));
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc, "no MMIO exit to userspace");
    let ent = entries(&v);
    // Each access re-entered the guest once, past the instruction.
    for (i, c) in ent.iter().enumerate() {
        assert_eq!(c.pc, RAM + 4 * i as u64, "entry {i}");
    }
    let x = |i: usize, r: usize| ent[i].x[r];
    assert_eq!(
        x(1, 1),
        3 | (1 << 16) | (9 << 19),
        "ITLinesNumber, MBIS, IDbits"
    );
    assert_eq!(x(2, 2), 0xffff_ffff_aaaa_aaaa);
    assert_eq!(x(3, 3), 0x3b);
    assert_eq!(x(4, 4) >> 32, 0);
    assert_ne!(x(4, 4) & (1 << 4), 0, "GICR_TYPER.Last");
    assert_eq!(x(6, 6), 0x13 | 0x40, "EnableGrp0|1, ARE, DS");
    assert_eq!(x(9, 7), 0xffff_fff8);
    assert_eq!(stat(&v, 0, Stat::VgicMmio), 9);
    assert_eq!(stat(&v, 0, Stat::InstEmul), 0);
    // Outside the windows: userspace's, as before.
    v.host().push(load(0x0900_0000, 2, false, false, 1));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::InstEmul);
}

#[test]
fn gic_mmio_goes_to_userspace_without_a_vgic() {
    let v = guest();
    v.host().push(load(GICD + 0x4, 2, false, false, 1));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::InstEmul);
}

#[test]
fn asserted_spi_reaches_the_list_registers() {
    let v = guest();
    attach(&v, 1).unwrap();
    // Before the guest set anything up, an entry has the interface on and nothing in it.
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let c = last_entry(&v);
    assert_eq!(c.vgic.ich_hcr_el2 & 1, 1, "ICH_HCR_EL2.En");
    assert_eq!(c.vgic.ich_lr_el2, [0; 16]);
    enable_spis(&v, &[33]);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(last_entry(&v).vgic.ich_lr_el2[0], 0);
    irq(&v, ioctl::VM_ASSERT_IRQ, 33).unwrap();
    // The guest takes it: its acknowledgement leaves the list register active.
    v.host().push(hvc().with(|c| {
        assert_eq!(c.vgic.ich_lr_el2[0], lr_pending_g1(33) | LR_EOI);
        c.vgic.ich_lr_el2[0] = 33 | LR_GROUP1 | LR_EOI | (1 << 63);
        c.vgic.ich_vmcr_el2 = VMCR_G1_OPEN;
    }));
    run(&v, "g", 0).unwrap();
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(33) | LR_EOI,
        "level SPI pending at entry (EOI set for the maintenance interrupt)"
    );
    // Active, line still high: active and pending at the next entry.
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(33) | LR_EOI | (1 << 63)
    );
    // The guest EOIs (list register empty) after the device lowered the line.
    irq(&v, ioctl::VM_DEASSERT_IRQ, 33).unwrap();
    v.host().push(hvc().with(|c| c.vgic.ich_lr_el2[0] = 0));
    run(&v, "g", 0).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(last_entry(&v).vgic.ich_lr_el2[0], 0);
    // An MSI through GICD_SETSPI_NSR.
    enable_spis(&v, &[40]);
    msi(&v, GICD + 0x40, 40).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(40) | LR_EOI
    );
}

#[test]
fn list_register_count_comes_from_ich_vtr_at_load() {
    let host = FakeHost::new(64, 2);
    host.ich_vtr
        .store(FAKE_ICH_VTR & !0x1f | 1, Ordering::SeqCst); // 2 list registers
    let v = guest_on(host);
    assert_eq!(v.ich_vtr & 0x1f, 1);
    attach(&v, 1).unwrap();
    enable_spis(&v, &[33, 34, 35]);
    for n in [33, 34, 35] {
        irq(&v, ioctl::VM_ASSERT_IRQ, n).unwrap();
    }
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let c = last_entry(&v);
    assert_eq!(c.vgic.ich_lr_el2[0] & 0xffff_ffff, 33);
    assert_eq!(c.vgic.ich_lr_el2[1] & 0xffff_ffff, 34);
    assert_eq!(c.vgic.ich_lr_el2[2], 0, "only two list registers");
    // More waiting than fits: underflow and no-pending maintenance requested.
    assert_eq!(c.vgic.ich_hcr_el2 & 0b1011, 0b1011);
}

#[test]
fn load_fails_when_el2_cannot_read_ich_vtr() {
    let host = FakeHost::new(64, 2);
    host.ich_vtr
        .store(vmm_sys::hyp::HYP_RET_UNKNOWN, Ordering::SeqCst);
    let (host, e) = Vmm::new(host, crate::fake::params()).err().unwrap();
    assert_eq!(e, Errno::ENXIO);
    assert!(host
        .cpus
        .lock()
        .unwrap()
        .iter()
        .all(|c| *c == crate::fake::CpuEl2::Stub));
}

#[test]
fn sgi1r_trap_pends_the_sgi_on_the_target_and_kicks_it() {
    let v = guest();
    activate(&v, "g", 1).unwrap();
    set_reg(&v, "g", 1, reg::VM_REG_GUEST_PC, RAM).unwrap();
    attach(&v, 2).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 1, 5);
    // ICC_SGI1R_EL1: INTID 5, TargetList bit 1 (Aff0 = 1 is vCPU 1).
    v.host()
        .push(msr(sysreg::ICC_SGI1R_EL1, 7, (5 << 24) | (1 << 1)));
    v.host().push(hvc());
    let before = v.host().kicks.load(Ordering::SeqCst);
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc, "SGI1R handled in the kernel");
    let vm = v.lookup(b"g").unwrap();
    assert!(
        vm.vcpus[1].shared.irq_pending.load(Ordering::SeqCst),
        "target told"
    );
    assert_eq!(
        v.host().kicks.load(Ordering::SeqCst),
        before,
        "target not running: woken, no IPI"
    );
    // A read of the write-only register answers zero.
    v.host()
        .push(mrs(sysreg::ICC_SGI1R_EL1, 8).with(|c| c.x[8] = 77));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(last_entry(&v).x[8], 0);
    // vCPU 1 finds the SGI in its list registers (edge: no EOI maintenance).
    v.host().push(hvc());
    run(&v, "g", 1).unwrap();
    assert_eq!(last_entry(&v).vgic.ich_lr_el2[0], lr_pending_g1(5));
    // IRM = 1: everyone but the sender; vCPU 0 sees nothing.
    v.host()
        .push(msr(sysreg::ICC_SGI1R_EL1, 7, (5 << 24) | (1 << 40)));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(last_entry(&v).vgic.ich_lr_el2[0], 0);
    assert_eq!(stat(&v, 0, Stat::RegEmul), 0);
}

#[test]
fn sgi_registers_go_to_userspace_without_a_vgic() {
    let v = guest();
    v.host().push(msr(sysreg::ICC_SGI1R_EL1, 7, 1));
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::RegEmul);
}

#[test]
fn wfi_sleeps_until_the_guest_has_an_interrupt_to_take() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[33]);
    // Masked by the guest's own priority mask: not a reason to wake.
    irq(&v, ioctl::VM_ASSERT_IRQ, 34).unwrap(); // not enabled: no reason either
    v.host()
        .push(wfi().with(|c| c.vgic.ich_vmcr_el2 = VMCR_G1_OPEN));
    v.host().push(hvc());
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        std::thread::sleep(Duration::from_millis(50));
        let asleep = !t.is_finished();
        irq(&v, ioctl::VM_ASSERT_IRQ, 33).unwrap();
        let e = t.join().unwrap().unwrap().0;
        assert!(asleep, "WFI slept while nothing was pending");
        assert_eq!(exitcode(&e), ExitCode::Smccc);
    });
    let ent = entries(&v);
    let (wfi_at, c) = (ent[ent.len() - 2], ent[ent.len() - 1]);
    assert_eq!(c.pc, wfi_at.pc + 4, "past the WFI");
    assert_eq!(c.vgic.ich_lr_el2[0], lr_pending_g1(33) | LR_EOI);
    // Already pending: straight back in, no sleep.
    let sleeps = v.host().sleeps.load(Ordering::SeqCst);
    v.host().push(wfi());
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(v.host().sleeps.load(Ordering::SeqCst), sleeps);
    // A priority mask at 0 hides it: the WFI sleeps until notified otherwise.
    v.host().push(wfi().with(|c| c.vgic.ich_vmcr_el2 = 2));
    v.host().push(hvc());
    std::thread::scope(|s| {
        let t = s.spawn(|| run(&v, "g", 0));
        std::thread::sleep(Duration::from_millis(30));
        let asleep = !t.is_finished();
        v.kick_vcpu(b"g", 0).unwrap();
        let e = t.join().unwrap().unwrap().0;
        assert!(asleep, "a masked interrupt does not wake WFI");
        assert_eq!(exitcode(&e), ExitCode::Bogus);
    });
}

#[test]
fn virtual_timer_fires_as_ppi_27_and_the_host_ppi_is_held() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 0, 27);
    // The guest arms its virtual timer 20 ms ahead and waits.
    let now = v.host().counter();
    v.host().push(wfi().with(move |c| {
        c.vgic.ich_vmcr_el2 = VMCR_G1_OPEN;
        c.timer.cntv_ctl_el0 = 1;
        c.timer.cntv_cval_el0 = now - c.timer.cntvoff_el2 + 20_000_000;
    }));
    v.host().push(hvc());
    v.host().vtimer_holds.lock().unwrap().clear();
    let t = Instant::now();
    run(&v, "g", 0).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(19),
        "{:?}",
        t.elapsed()
    );
    let c = last_entry(&v);
    assert_eq!(
        c.vgic.ich_lr_el2[0],
        lr_pending_g1(27) | LR_EOI,
        "PPI 27, level"
    );
    // The entry after the timer fired held the host's PPI 27, and released it after.
    assert_eq!(*v.host().vtimer_holds.lock().unwrap(), [true, false]);
    // The guest handles it: masks the timer, EOIs. Nothing pending, nothing held.
    v.host().push(hvc().with(|c| {
        c.timer.cntv_ctl_el0 = 3;
        c.vgic.ich_lr_el2[0] = 0;
    }));
    run(&v, "g", 0).unwrap();
    v.host().vtimer_holds.lock().unwrap().clear();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(last_entry(&v).vgic.ich_lr_el2[0], 0);
    assert!(v.host().vtimer_holds.lock().unwrap().is_empty());
}

#[test]
fn virtual_timer_due_while_running_pends_after_the_exit() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 0, 27);
    // The guest's timer fires while it runs: the host PPI exits it (an IRQ exit).
    v.host().push(Scripted::irq().with(|c| {
        c.timer.cntv_ctl_el0 = 1;
        c.timer.cntv_cval_el0 = 0;
    }));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let c = last_entry(&v);
    assert_eq!(c.vgic.ich_lr_el2[0], lr_pending_g1(27) | LR_EOI);
}

#[test]
fn physical_timer_is_emulated_in_the_kernel() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 0, 30);
    let now = v.host().counter();
    // CVAL 2 s ahead, read back through TVAL; then in the past: the line goes high.
    v.host()
        .push(msr(sysreg::CNTP_CVAL_EL0, 1, now + 2_000_000_000));
    v.host().push(msr(sysreg::CNTP_CTL_EL0, 2, 1));
    v.host().push(mrs(sysreg::CNTP_CTL_EL0, 3));
    v.host().push(mrs(sysreg::CNTP_TVAL_EL0, 4));
    v.host().push(mrs(sysreg::CNTP_CVAL_EL0, 5));
    v.host()
        .push(msr(sysreg::CNTP_TVAL_EL0, 6, (-1000i32) as u32 as u64));
    v.host().push(mrs(sysreg::CNTP_CTL_EL0, 7));
    v.host().push(hvc());
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Smccc, "no REG_EMUL");
    let ent = entries(&v);
    let n = ent.len();
    let after = |k: usize| ent[n - 1 - k];
    // Entries after: ..., mrs ctl (x3), mrs tval (x4), mrs cval (x5), msr tval, mrs ctl (x7), hvc.
    assert_eq!(after(4).x[3], 1, "enabled, not yet due: no ISTATUS");
    let tval = after(3).x[4];
    assert!(tval > 1_000_000_000 && tval <= 2_000_000_000, "{tval}");
    assert_eq!(after(2).x[5], now + 2_000_000_000);
    assert_eq!(after(0).x[7], 5, "ENABLE | ISTATUS after TVAL = -1000");
    assert_eq!(stat(&v, 0, Stat::TimerKernel), 7);
    assert_eq!(stat(&v, 0, Stat::RegEmul), 0);
    // PPI 30 pending for the guest.
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(30) | LR_EOI
    );
    // A WFI with the physical timer armed 20 ms ahead sleeps until then.
    let now = v.host().counter();
    v.host().push(hvc().with(|c| c.vgic.ich_lr_el2[0] = 0)); // the guest takes it
    v.host()
        .push(msr(sysreg::CNTP_CVAL_EL0, 1, now + 20_000_000));
    v.host()
        .push(wfi().with(|c| c.vgic.ich_vmcr_el2 = VMCR_G1_OPEN));
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let t = Instant::now();
    run(&v, "g", 0).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(15),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(30) | LR_EOI
    );
}

#[test]
fn reinit_resets_the_vgic_and_keeps_it_attached() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[33]);
    irq(&v, ioctl::VM_ASSERT_IRQ, 33).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_ne!(last_entry(&v).vgic.ich_lr_el2[0], 0);
    let mut s = VmSuspend { how: 1 };
    vmio(&v, "g", ioctl::VM_SUSPEND, &mut s).unwrap();
    let (e, _) = run(&v, "g", 0).unwrap();
    assert_eq!(exitcode(&e), ExitCode::Suspended);
    v.dispatch(DeviceRef::Vm(b"g"), ioctl::VM_REINIT, &mut [])
        .unwrap();
    assert_eq!(attach(&v, 1), Err(Errno::EEXIST), "still attached");
    activate(&v, "g", 0).unwrap();
    set_reg(&v, "g", 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        0,
        "nothing enabled after reset"
    );
}

#[test]
fn an_interrupt_raised_between_flush_and_entry_is_not_lost() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[33]);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    // SPI 33 asserted by another thread right after this entry's flush, before the
    // vCPU is published as running: its notifier sends no IPI, so only the re-check
    // with interrupts off can catch it.
    let vp = &v as *const Vmm<FakeHost> as usize;
    *v.host().on_intr_disable.lock().unwrap() = Some(Box::new(move || {
        // SAFETY: `v` outlives the run below, during which this hook runs.
        let v = unsafe { &*(vp as *const Vmm<FakeHost>) };
        irq(v, ioctl::VM_ASSERT_IRQ, 33).unwrap();
    }));
    let before = entries(&v).len();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let ent = entries(&v);
    assert_eq!(ent.len(), before + 1, "one entry");
    assert_eq!(
        ent[before].vgic.ich_lr_el2[0],
        lr_pending_g1(33) | LR_EOI,
        "flushed again before entering"
    );
}

/// An entry the re-check abandons (here: an SPI asserted between the flush and the
/// entry) must not lose what the flush moved into the list registers: an SGI, edge,
/// leaves its latch there. Both are in the list registers of the entry that happens.
#[test]
fn an_abandoned_entry_keeps_the_edge_interrupts_its_flush_took() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[33]);
    enable_private(&v, 0, 5);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    // The guest sends SGI 5 to itself (TargetList bit 0); at that exit the hook is set
    // for the next entry, whose flush takes the SGI; then the guest makes a call.
    let vp = &v as *const Vmm<FakeHost> as usize;
    v.host()
        .push(msr(sysreg::ICC_SGI1R_EL1, 7, (5 << 24) | 1).then(move |_| {
            // SAFETY: `v` outlives the run below, during which this runs.
            let v = unsafe { &*(vp as *const Vmm<FakeHost>) };
            *v.host().on_intr_disable.lock().unwrap() = Some(Box::new(move || {
                // SAFETY: as above.
                let v = unsafe { &*(vp as *const Vmm<FakeHost>) };
                irq(v, ioctl::VM_ASSERT_IRQ, 33).unwrap();
            }));
        }));
    v.host().push(hvc());
    let before = entries(&v).len();
    run(&v, "g", 0).unwrap();
    let ent = entries(&v);
    let lrs = &ent[before + 1].vgic.ich_lr_el2;
    assert!(
        lrs.contains(&lr_pending_g1(5)),
        "the SGI the abandoned entry's flush took: {lrs:x?}"
    );
    assert!(
        lrs.contains(&(lr_pending_g1(33) | LR_EOI)),
        "the SPI that made it abandon: {lrs:x?}"
    );
}

#[test]
fn virtual_timer_due_while_in_userspace_is_delivered_at_the_next_entry() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 0, 27);
    // The guest arms its timer 5 ms ahead and makes a call userspace takes 10 ms over.
    let now = v.host().counter();
    v.host().push(hvc().with(move |c| {
        c.vgic.ich_vmcr_el2 = VMCR_G1_OPEN;
        c.timer.cntv_ctl_el0 = 1;
        c.timer.cntv_cval_el0 = now - c.timer.cntvoff_el2 + 5_000_000;
    }));
    run(&v, "g", 0).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    v.host().vtimer_holds.lock().unwrap().clear();
    let before = entries(&v).len();
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    let ent = entries(&v);
    assert_eq!(ent.len(), before + 1);
    // The very next entry has PPI 27 to take, and only then is the host's PPI held.
    assert_eq!(ent[before].vgic.ich_lr_el2[0], lr_pending_g1(27) | LR_EOI);
    assert_eq!(*v.host().vtimer_holds.lock().unwrap(), [true, false]);
}

#[test]
fn vcpu_without_a_redistributor_cannot_run() {
    let v = guest();
    activate(&v, "g", 1).unwrap();
    attach(&v, 1).unwrap();
    v.host().push(hvc());
    assert_eq!(run(&v, "g", 1).map(|_| ()), Err(Errno::EINVAL));
    v.host().script.lock().unwrap().clear();
}

#[test]
fn physical_timer_fires_while_the_guest_runs() {
    let v = guest();
    attach(&v, 1).unwrap();
    enable_spis(&v, &[]);
    enable_private(&v, 0, 30);
    v.host().push(hvc());
    run(&v, "g", 0).unwrap();
    assert!(
        v.host().timer_arms.lock().unwrap().is_empty(),
        "no host timer while the physical timer is off"
    );
    // The guest arms its physical timer 5 ms ahead and keeps running: the entry after
    // arms a host timer at that deadline.
    let cval = v.host().counter() + 5_000_000;
    v.host().push(msr(sysreg::CNTP_CVAL_EL0, 1, cval));
    v.host().push(msr(sysreg::CNTP_CTL_EL0, 2, 1));
    // Running past the deadline, the host timer interrupt fires: the running vCPU is
    // IPIed out (an IRQ exit), and the next entry has PPI 30.
    let hp = v.host() as *const FakeHost as usize;
    v.host().push(Scripted::irq().with(move |_| {
        std::thread::sleep(Duration::from_millis(10));
        // SAFETY: the host outlives the run this scripted exit is part of.
        let h = unsafe { &*(hp as *const FakeHost) };
        assert_eq!(h.fire_due_timers(), 1);
    }));
    v.host().push(hvc());
    let kicks = v.host().kicks.load(Ordering::SeqCst);
    run(&v, "g", 0).unwrap();
    assert_eq!(v.host().timer_arms.lock().unwrap()[0], Some(cval));
    assert_eq!(
        v.host().kicks.load(Ordering::SeqCst),
        kicks + 1,
        "the running vCPU was IPIed"
    );
    assert_eq!(
        last_entry(&v).vgic.ich_lr_el2[0],
        lr_pending_g1(30) | LR_EOI
    );
    // Due and delivered: the host timer is disarmed.
    assert_eq!(*v.host().timer_arms.lock().unwrap().last().unwrap(), None);
}

#[test]
fn kicks_iterate_their_members_lowest_first() {
    use crate::vgic::Kicks;
    let mut k = Kicks::default();
    assert_eq!(k.iter().count(), 0);
    for v in [5, 0, 15, 3] {
        k.add(v);
    }
    assert_eq!(k.iter().collect::<Vec<_>>(), [0, 3, 5, 15]);
    // Bits past the largest vCPU id are never members.
    assert_eq!(Kicks(u32::MAX).iter().count(), crate::vgic::MAX_CPUS);
}

#[test]
fn vgic_windows_hold_exactly_the_attached_ranges() {
    let w = crate::vm::VgicWindows::default();
    assert!(!w.contains(0) && !w.contains(0x2f00_0000));
    w.set((0x2f00_0000, 0x1_0000), (0x2f10_0000, 0x4_0000));
    for (ipa, inside) in [
        (0x2eff_ffff, false),
        (0x2f00_0000, true),
        (0x2f00_ffff, true),
        (0x2f01_0000, false),
        (0x2f10_0000, true),
        (0x2f13_ffff, true),
        (0x2f14_0000, false),
        (u64::MAX, false),
    ] {
        assert_eq!(w.contains(ipa), inside, "{ipa:#x}");
    }
}

/// The flush looks only at interrupts something touched since it last found them
/// idle: an SPI or SGI made pending and enabled is delivered, and once it is idle
/// again its mark is gone.
#[test]
fn flush_scans_only_touched_interrupts() {
    use crate::vgic::Vgic;
    let mut g = Vgic::new(&[0x8000_0000], GICD, GICR, FAKE_ICH_VTR).unwrap();
    assert_eq!(g.spi_maybe_live, 0, "nothing touched after reset");
    let mut regs = vmm_sys::hyp::VgicCpuRegs::default();
    // GICD_CTLR: both groups on; SPI 40 group 1, enabled, its line raised.
    let mut v = 3u64;
    g.mmio_access(0, GICD, 4, true, &mut v).unwrap();
    v = 1 << 8;
    g.mmio_access(0, GICD + 0x84, 4, true, &mut v).unwrap();
    g.mmio_access(0, GICD + 0x104, 4, true, &mut v).unwrap();
    g.assert_spi(40).unwrap();
    assert_ne!(g.spi_maybe_live & (1 << 8), 0);
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0] & 0xffff_ffff, 40, "delivered");
    // The guest takes and finishes it; the line drops.
    regs.ich_lr_el2[0] = 0;
    g.sync(0, &regs);
    g.deassert_spi(40).unwrap();
    g.flush(0, &mut regs);
    assert_eq!(regs.lr_used, 0);
    assert_eq!(g.spi_maybe_live, 0, "idle again: unmarked");
    // The same for a private interrupt: an SGI sent to itself (group 1, enabled).
    v = 1 << 3;
    g.mmio_access(0, GICR + SGI_FRAME + 0x80, 4, true, &mut v)
        .unwrap();
    g.mmio_access(0, GICR + SGI_FRAME + 0x100, 4, true, &mut v)
        .unwrap();
    let sgi3_to_aff0_0 = (3 << 24) | 1;
    g.sysreg_write(0, sysreg::ICC_SGI1R_EL1, sgi3_to_aff0_0);
    assert_ne!(g.cpus[0].private_maybe_live & (1 << 3), 0);
    g.flush(0, &mut regs);
    assert_eq!(regs.ich_lr_el2[0] & 0xffff_ffff, 3, "delivered");
    regs.ich_lr_el2[0] = 0;
    g.sync(0, &regs);
    g.flush(0, &mut regs);
    assert_eq!(regs.lr_used, 0);
    assert_eq!(g.cpus[0].private_maybe_live, 0, "idle again: unmarked");
    assert!(!g.has_pending(0));
}
