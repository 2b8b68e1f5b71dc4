//! Tests through vmm-core: `Vmm::new` brings EL2 up with the testbed's `Host`,
//! every VM operation is an ioctl through `Vmm::dispatch` (argument bytes and pointers
//! exactly as /dev/vmm gets them), `Vmm::shutdown` takes EL2 down.

extern crate alloc;
use crate::kernel::host::{self, TestbedHost};
use crate::{kernel::mm, kernel::timer};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicI32, Ordering};
use vmm_core::{DeviceRef, Vmm};
use vmm_sys::abi::*;
use vmm_sys::exit::{ExitCode, SuspendHow};
use vmm_sys::ioctl::*;
use vmm_sys::reg::{VM_REG_GUEST_PC, VM_REG_GUEST_X0};

pub type Core = Vmm<TestbedHost>;

pub mod store_queue;
pub mod vgic;

pub fn load() -> Result<Core, String> {
    let params = host::prepare().ok_or("cannot prepare the EL2 blob")?;
    Vmm::new(TestbedHost::new(), params).map_err(|e| format!("Vmm::new: {e:?}"))
}

fn ioctl<T: Pod>(vmm: &Core, dev: DeviceRef<'_>, cmd: u64, v: &mut T) -> Result<(), String> {
    // SAFETY: T is Pod (plain bytes); the dispatcher reads and writes its bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(v as *mut T as *mut u8, core::mem::size_of::<T>())
    };
    vmm.dispatch(dev, cmd, bytes)
        .map_err(|e| format!("ioctl {cmd:#x}: {e:?}"))
}

pub fn create(vmm: &Core, name: &[u8], image: &[u8], ram: u64) -> Result<(), String> {
    let mut c = VmmctlVmCreate::new(name).ok_or("name")?;
    ioctl(vmm, DeviceRef::Ctl, VMMCTL_VM_CREATE, &mut c)?;
    let dev = DeviceRef::Vm(name);
    let mut seg = VmMemseg {
        segid: 0,
        len: ram,
        ..Default::default()
    };
    ioctl(vmm, dev, VM_ALLOC_MEMSEG, &mut seg)?;
    let mut map = VmMemmap {
        gpa: 0x8000_0000,
        segid: 0,
        segoff: 0,
        len: ram,
        prot: PROT_ALL,
        flags: 0,
        ..Default::default()
    };
    ioctl(vmm, dev, VM_MMAP_MEMSEG, &mut map)?;
    // Guest memory may be several physically contiguous runs: copy run by run.
    let mut done = 0usize;
    while done < image.len() {
        let (_, va, len) = vmm
            .gpa_to_pa(name, 0x8000_0000 + done as u64)
            .ok_or("gpa_to_pa")?;
        let n = (len as usize).min(image.len() - done);
        if n == 0 {
            return Err("empty guest memory run".into());
        }
        // SAFETY: `va` is the kernel address of at least `len` >= n bytes of guest memory.
        unsafe { core::ptr::copy_nonoverlapping(image[done..].as_ptr(), va, n) };
        done += n;
    }
    if !image.is_empty() {
        vmm_arm64::cache::inval_icache_all();
    }
    Ok(())
}

pub fn destroy(vmm: &Core, name: &[u8]) -> Result<(), String> {
    let mut c = VmmctlVmCreate::new(name).ok_or("name")?;
    ioctl(vmm, DeviceRef::Ctl, VMMCTL_VM_DESTROY, &mut c)
}

fn set_reg(vmm: &Core, name: &[u8], reg: u32, val: u64) -> Result<(), String> {
    let mut r = VmRegister {
        cpuid: 0,
        regnum: reg as i32,
        regval: val,
    };
    ioctl(vmm, DeviceRef::Vm(name), VM_SET_REGISTER, &mut r)
}

/// The hvc_loop guest through VM_RUN: each `hvc` is an SMCCC exit to "userspace"
/// with x0 as the function id; the answer goes back with VM_SET_REGISTER.
pub fn hvc_through_dispatch(vmm: &Core, image: &[u8], n: u64) -> Result<String, String> {
    let name = b"tb-hvc";
    create(vmm, name, image, 0x10000)?;
    let r = (|| {
        set_reg(vmm, name, VM_REG_GUEST_PC, 0x8000_0000)?;
        set_reg(vmm, name, VM_REG_GUEST_X0, n)?;
        let mut act = VmActivateCpu { vcpuid: 0 };
        ioctl(vmm, DeviceRef::Vm(name), VM_ACTIVATE_CPU, &mut act)?;
        let mut exit = VmExit::default();
        let mut exits = 0u64;
        let start = timer::now();
        loop {
            let mut run = VmRun {
                cpuid: 0,
                vm_exit: &mut exit as *mut VmExit as u64,
                ..Default::default()
            };
            ioctl(vmm, DeviceRef::Vm(name), VM_RUN, &mut run)?;
            // SMCCC's conduit is `hvc #0`; the guest's `hvc #1`/`#2` come out as HYP
            // exits carrying ESR_EL2 (FreeBSD does the same).
            // SAFETY: a HYP exit fills the hyp member.
            let esr = unsafe { exit.u.hyp.esr_el2 };
            if exit.exitcode != ExitCode::Hyp as i32 || esr >> 26 != 0x16 {
                return Err(format!(
                    "exit code {} esr {esr:#x} at pc {:#x} after {exits}",
                    exit.exitcode, exit.pc
                ));
            }
            let mut x0 = VmRegister {
                cpuid: 0,
                regnum: VM_REG_GUEST_X0 as i32,
                regval: 0,
            };
            ioctl(vmm, DeviceRef::Vm(name), VM_GET_REGISTER, &mut x0)?;
            let x0 = x0.regval;
            exits += 1;
            if exits <= n {
                if x0 != exits || esr & 0xffff != 1 {
                    return Err(format!("x0 {x0} esr {esr:#x} at exit {exits}"));
                }
                set_reg(vmm, name, VM_REG_GUEST_X0 + 1, x0 + 1000)?;
            } else {
                if x0 != n || esr & 0xffff != 2 {
                    return Err(format!("done with x0 {x0}, esr {esr:#x}"));
                }
                let us = (timer::now() - start) * 1_000_000 / timer::freq();
                return Ok(format!("{n} hvc exits via VM_RUN, VM_GET/SET_REGISTER; resumed past each hvc ({us} us)"));
            }
        }
    })();
    destroy(vmm, name)?;
    r
}

/// 1,000 VMs created (with memory) and destroyed through the dispatcher return every
/// page to the allocator.
pub fn thousand_vms(vmm: &Core) -> Result<String, String> {
    // Warm up the heap's size classes so their pages are not counted as a leak.
    create(vmm, b"tb-warm", &[], 0x10000)?;
    destroy(vmm, b"tb-warm")?;
    let before = mm::free_pages();
    for i in 0..1000 {
        let name = format!("tb-{i}");
        create(vmm, name.as_bytes(), &[], 0x10000)?;
        destroy(vmm, name.as_bytes())?;
    }
    let after = mm::free_pages();
    let held = before as i64 - after as i64;
    if held > 8 {
        return Err(format!("{held} pages not returned after 1,000 VMs"));
    }
    Ok(format!(
        "1,000 VMs with 64 KiB each created and destroyed; {held} pages held by heap free lists"
    ))
}

pub fn unload(vmm: Core) -> Result<(), String> {
    vmm.shutdown().map_err(|e| format!("shutdown: {e:?}"))?;
    host::mark_down();
    vmm.into_host().map_err(|_| "vmm still up")?;
    host::release();
    Ok(())
}

fn vm_ioctl<T: Pod>(vmm: &Core, name: &[u8], cmd: u64, v: &mut T) -> Result<(), String> {
    ioctl(vmm, DeviceRef::Vm(name), cmd, v)
}

pub fn get_reg(vmm: &Core, name: &[u8], reg: u32) -> Result<u64, String> {
    let mut r = VmRegister {
        cpuid: 0,
        regnum: reg as i32,
        regval: 0,
    };
    vm_ioctl(vmm, name, VM_GET_REGISTER, &mut r)?;
    Ok(r.regval)
}

/// Creates VM `name` running `image` from 0x8000_0000 with x0 = `x0`, vCPU 0 active.
pub fn start(vmm: &Core, name: &[u8], image: &[u8], x0: u64) -> Result<(), String> {
    create(vmm, name, image, 0x10000)?;
    set_reg(vmm, name, VM_REG_GUEST_PC, 0x8000_0000)?;
    set_reg(vmm, name, VM_REG_GUEST_X0, x0)?;
    vm_ioctl(vmm, name, VM_ACTIVATE_CPU, &mut VmActivateCpu { vcpuid: 0 })
}

/// One VM_RUN of vCPU 0.
pub fn run(vmm: &Core, name: &[u8]) -> Result<VmExit, String> {
    run_vcpu(vmm, name, 0)
}

/// One VM_RUN of vCPU `cpu`.
pub fn run_vcpu(vmm: &Core, name: &[u8], cpu: i32) -> Result<VmExit, String> {
    let mut exit = VmExit::default();
    let mut r = VmRun {
        cpuid: cpu,
        vm_exit: &mut exit as *mut VmExit as u64,
        ..Default::default()
    };
    vm_ioctl(vmm, name, VM_RUN, &mut r)?;
    Ok(exit)
}

/// VM_SET_REGISTER of vCPU `cpu`.
pub fn set_vcpu_reg(vmm: &Core, name: &[u8], cpu: i32, reg: u32, val: u64) -> Result<(), String> {
    let mut r = VmRegister {
        cpuid: cpu,
        regnum: reg as i32,
        regval: val,
    };
    vm_ioctl(vmm, name, VM_SET_REGISTER, &mut r)
}

/// The `hvc #imm` of a HYP exit, if it is one.
fn hvc_of(e: &VmExit) -> Option<u64> {
    // SAFETY: the union's words are plain integers; only read for HYP exits.
    let esr = unsafe { e.u.hyp.esr_el2 };
    (e.exitcode == ExitCode::Hyp as i32 && esr >> 26 == 0x16).then_some(esr & 0xffff)
}

/// Runs vCPU 0 of VM `name` once; the exit must be its final `hvc #2` (`what` says
/// which exit came out instead).
fn run_to_done(vmm: &Core, name: &[u8], what: &str) -> Result<(), String> {
    let e = run(vmm, name)?;
    if hvc_of(&e) != Some(2) {
        return Err(format!("exit code {} pc {:#x}: {what}", e.exitcode, e.pc));
    }
    Ok(())
}

fn with_vm(
    vmm: &Core,
    name: &[u8],
    f: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let r = f();
    destroy(vmm, name)?;
    r
}

/// The MMIO guest through the core's decoding: each access is an INST_EMUL exit whose
/// `vie` (size, sign extension, direction, register) the caller answers with
/// VM_GET/SET_REGISTER, as bhyve does; the kernel truncates and sign-extends.
pub fn mmio(vmm: &Core, image: &[u8]) -> Result<String, String> {
    let name = b"tb-mmio";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        let (mut reads, mut writes) = (0u32, 0u32);
        loop {
            let e = run(vmm, name)?;
            if e.exitcode == ExitCode::InstEmul as i32 {
                // SAFETY: an INST_EMUL exit fills inst_emul.
                let ie = unsafe { e.u.inst_emul };
                let off = ie.gpa.wrapping_sub(0x0a00_0000);
                if off >= 0x1000 {
                    return Err(format!("INST_EMUL at gpa {:#x}", ie.gpa));
                }
                let size = u32::from(ie.vie.access_size());
                let mask = if size == 8 {
                    u64::MAX
                } else {
                    (1u64 << (size * 8)) - 1
                };
                let reg = ie.vie.reg;
                if ie.vie.is_write() {
                    writes += 1;
                    let v = get_reg(vmm, name, reg as u32)? & mask;
                    let xzr = reg == vmm_sys::reg::VM_REG_LAST as i32;
                    let want = if xzr {
                        0
                    } else {
                        crate::cases::el2_blob::mmio_write_value(off) & mask
                    };
                    if v != want {
                        return Err(format!(
                            "write +{off:#x} size {size} reg {reg}: {v:#x}, want {want:#x}"
                        ));
                    }
                } else {
                    reads += 1;
                    set_reg(
                        vmm,
                        name,
                        reg as u32,
                        crate::cases::el2_blob::mmio_read_value(off) & mask,
                    )?;
                }
                continue;
            }
            match hvc_of(&e) {
                Some(2)
                    if get_reg(vmm, name, VM_REG_GUEST_X0)? == 416
                        && reads == 288
                        && writes == 128 =>
                {
                    return Ok(format!("{reads} reads and {writes} writes as INST_EMUL exits, every size, sign extension and register incl. xzr"));
                }
                Some(3) => {
                    return Err(format!(
                        "guest saw a wrong value at access {}",
                        get_reg(vmm, name, VM_REG_GUEST_X0)?
                    ))
                }
                _ => {
                    return Err(format!(
                        "exit code {} pc {:#x} reads={reads} writes={writes}",
                        e.exitcode, e.pc
                    ))
                }
            }
        }
    })
}

/// The isolation guest on VM `name` with `marker` at RAM offset 0x800: its reads outside
/// its RAM come out as INST_EMUL exits (answered with 0xdead000N), its own RAM holds
/// only its marker.
pub fn isolation(vmm: &Core, name: &[u8], image: &[u8], marker: u64) -> Result<(), String> {
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        let (_, va, _) = vmm.gpa_to_pa(name, 0x8000_0800).ok_or("gpa_to_pa")?;
        // SAFETY: `va` maps guest RAM at 0x8000_0800, at least 8 bytes (RAM is 64 KiB).
        unsafe { core::ptr::write_volatile(va as *mut u64, marker) };
        let want_gpa = [0x4000_0000u64, 0x8001_0000, 0x7f_ffff_f000];
        let mut n = 0;
        loop {
            let e = run(vmm, name)?;
            if e.exitcode == ExitCode::InstEmul as i32 {
                // SAFETY: an INST_EMUL exit fills inst_emul.
                let ie = unsafe { e.u.inst_emul };
                if want_gpa.get(n) != Some(&ie.gpa) {
                    return Err(format!("exit {n} at gpa {:#x}", ie.gpa));
                }
                set_reg(vmm, name, ie.vie.reg as u32, 0xdead_0000 + n as u64)?;
                n += 1;
                continue;
            }
            if hvc_of(&e) != Some(2) {
                return Err(format!("exit code {} pc {:#x}", e.exitcode, e.pc));
            }
            let mut got = [0u64; 4];
            for (i, g) in got.iter_mut().enumerate() {
                *g = get_reg(vmm, name, VM_REG_GUEST_X0 + 3 + i as u32)?;
            }
            let want = [0xdead_0000, 0xdead_0001, 0xdead_0002, marker];
            return if got == want {
                Ok(String::new())
            } else {
                Err(format!("guest read {got:#x?}, want {want:#x?}"))
            };
        }
    })
    .map(|_| ())
}

/// WFI handled in the kernel: the guest arms its virtual timer and waits; VM_RUN must
/// sleep until the timer condition holds and resume the guest past the WFI.
pub fn wfi(vmm: &Core, image: &[u8]) -> Result<String, String> {
    let name = b"tb-wfi";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        run_to_done(vmm, name, "WFI came out of the kernel")?;
        let waited = get_reg(vmm, name, VM_REG_GUEST_X0)?;
        let want = get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?;
        if waited < want {
            return Err(format!(
                "WFI returned after {waited} ticks, timer was {want} ticks away"
            ));
        }
        Ok(format!("WFI slept in VM_RUN until the guest's virtual timer ({waited} >= {want} ticks), resumed past it"))
    })
}

/// Loads the host's v0..v31 and FPCR from `b` (the kernel is soft-float: nothing
/// between this and `fp_store` touches them unless the world switch fails to restore).
fn fp_load(b: &crate::cases::el2_blob::FpBuf) {
    // SAFETY: reads 528 bytes of `b` into the FP registers (CPACR_EL1.FPEN is set).
    unsafe {
        core::arch::asm!(
            ".arch_extension fp", ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]", "ldp q2, q3, [{p}, #32]", "ldp q4, q5, [{p}, #64]",
            "ldp q6, q7, [{p}, #96]", "ldp q8, q9, [{p}, #128]", "ldp q10, q11, [{p}, #160]",
            "ldp q12, q13, [{p}, #192]", "ldp q14, q15, [{p}, #224]", "ldp q16, q17, [{p}, #256]",
            "ldp q18, q19, [{p}, #288]", "ldp q20, q21, [{p}, #320]", "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]", "ldp q26, q27, [{p}, #416]", "ldp q28, q29, [{p}, #448]",
            "ldp q30, q31, [{p}, #480]",
            "ldr {t}, [{p}, #512]", "msr fpcr, {t}",
            p = in(reg) b.0.as_ptr(), t = out(reg) _,
        )
    };
}

fn fp_store(b: &mut crate::cases::el2_blob::FpBuf) {
    // SAFETY: writes the FP registers into the 528 bytes of `b`; FPCR back to 0.
    unsafe {
        core::arch::asm!(
            ".arch_extension fp", ".arch_extension simd",
            "stp q0, q1, [{p}, #0]", "stp q2, q3, [{p}, #32]", "stp q4, q5, [{p}, #64]",
            "stp q6, q7, [{p}, #96]", "stp q8, q9, [{p}, #128]", "stp q10, q11, [{p}, #160]",
            "stp q12, q13, [{p}, #192]", "stp q14, q15, [{p}, #224]", "stp q16, q17, [{p}, #256]",
            "stp q18, q19, [{p}, #288]", "stp q20, q21, [{p}, #320]", "stp q22, q23, [{p}, #352]",
            "stp q24, q25, [{p}, #384]", "stp q26, q27, [{p}, #416]", "stp q28, q29, [{p}, #448]",
            "stp q30, q31, [{p}, #480]",
            "mrs {t}, fpcr", "str {t}, [{p}, #512]", "msr fpcr, xzr",
            p = in(reg) b.0.as_mut_ptr(), t = out(reg) _,
        )
    };
}

/// CPACR_EL1.FPEN (bits 21:20; CPTR_EL2's in the E2H layout when the kernel runs at
/// EL2): FP at the kernel's level and EL0 traps (`false`) or does not.
fn set_host_fp(on: bool) {
    let cpacr = vmm_arm64::mrs!("cpacr_el1") & !(3 << 20);
    let v = if on { cpacr | (3 << 20) } else { cpacr };
    // SAFETY: only FP's enable changes; the testbed kernel (softfloat) uses no FP
    // between here and the switch back.
    unsafe { vmm_arm64::msr!("cpacr_el1", v) };
    vmm_arm64::barrier::isb();
}

static FP_IMAGE: vmm_core::sync::SpinLock<&'static [u8]> = vmm_core::sync::SpinLock::new_spin(&[]);

/// The FP/GPR guest through VM_RUN on this CPU, VM `tb-fp<cpu>`; `vmm` is a `&Core`
/// as an integer (for `cpu::post`). Returns 0 or a failure code as in tests.rs.
pub fn fp_on_this_cpu(vmm: u64) -> u64 {
    // SAFETY: the caller passes a &Core that outlives the call (it waits for us).
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    let me = crate::kernel::cpu::id() as u64;
    let image = *FP_IMAGE.lock();
    let mut pin = crate::cases::el2_blob::FpBuf([0; 66]);
    let mut pout = crate::cases::el2_blob::FpBuf([0; 66]);
    hvc_rounds(
        vmm,
        &format!("tb-fp{me}"),
        image,
        (1000, None),
        |round, run| {
            for (i, w) in pin.0.iter_mut().enumerate().take(64) {
                *w = (me << 60) ^ (round << 24) ^ (i as u64 * 0x0003_0005_0007_0009);
            }
            pin.0[64] = (round % 3 + 1) << 22;
            fp_load(&pin);
            // Every other VM_RUN with the host's FP off (CPACR_EL1.FPEN: on a VHE host
            // CPTR_EL2's, trapping EL2 itself), as a kernel whose thread's FP is not
            // live runs: the switch must not touch FP under the host's controls then.
            let host_fp_off = round % 2 == 1;
            if host_fp_off {
                set_host_fp(false);
            }
            let e = run();
            if host_fp_off {
                set_host_fp(true);
            }
            fp_store(&mut pout);
            (e, pin.0[..65] == pout.0[..65])
        },
    )
}

/// Starts VM `name` with `image` (x0 = `args.0`, x1 = `args.1` if given) and runs it on
/// this CPU until the guest's final `hvc #2`, which must come after exactly `args.0`
/// `hvc #1` exits. `around(round, run)` does the host's part around each VM_RUN (`run`)
/// and says whether the host's state came through it. Returns 0, 1 (no VM), 2 (the host's
/// state changed), 4 (another exit), 5 (VM_RUN failed) or 1000 + the guest's x0 after
/// its `hvc #3` (what it found wrong). The VM is destroyed at the end.
fn hvc_rounds(
    vmm: &Core,
    name: &str,
    image: &[u8],
    args: (u64, Option<u64>),
    mut around: impl FnMut(
        u64,
        &mut dyn FnMut() -> Result<VmExit, String>,
    ) -> (Result<VmExit, String>, bool),
) -> u64 {
    let name = name.as_bytes();
    let (rounds_wanted, x1) = args;
    let x0 = if x1.is_some() { 0 } else { rounds_wanted };
    if start(vmm, name, image, x0).is_err() {
        return 1;
    }
    if let Some(x1) = x1 {
        if set_reg(vmm, name, VM_REG_GUEST_X0, x1).is_err()
            || set_reg(vmm, name, VM_REG_GUEST_X0 + 1, rounds_wanted).is_err()
        {
            let _ = destroy(vmm, name);
            return 1;
        }
    }
    let mut rounds = 0u64;
    let r = loop {
        let (e, host_intact) = around(rounds, &mut || run(vmm, name));
        let Ok(e) = e else { break 5 };
        if !host_intact {
            break 2;
        }
        match hvc_of(&e) {
            Some(1) => rounds += 1,
            Some(2) if rounds == rounds_wanted => break 0,
            Some(3) => break 1000 + get_reg(vmm, name, VM_REG_GUEST_X0).unwrap_or(999),
            _ => break 4,
        }
    };
    let _ = destroy(vmm, name);
    r
}

/// This CPU's ten pointer-authentication key registers (APIA, APIB, APDA, APDB, APGA;
/// Lo then Hi).
fn read_pac_keys() -> [u64; 10] {
    [
        vmm_arm64::mrs!("S3_0_C2_C1_0"),
        vmm_arm64::mrs!("S3_0_C2_C1_1"),
        vmm_arm64::mrs!("S3_0_C2_C1_2"),
        vmm_arm64::mrs!("S3_0_C2_C1_3"),
        vmm_arm64::mrs!("S3_0_C2_C2_0"),
        vmm_arm64::mrs!("S3_0_C2_C2_1"),
        vmm_arm64::mrs!("S3_0_C2_C2_2"),
        vmm_arm64::mrs!("S3_0_C2_C2_3"),
        vmm_arm64::mrs!("S3_0_C2_C3_0"),
        vmm_arm64::mrs!("S3_0_C2_C3_1"),
    ]
}

fn write_pac_keys(k: &[u64; 10]) {
    // SAFETY: the testbed kernel is not built with pointer authentication, so no code
    // of it signs or authenticates with these keys.
    unsafe {
        vmm_arm64::msr!("S3_0_C2_C1_0", k[0]);
        vmm_arm64::msr!("S3_0_C2_C1_1", k[1]);
        vmm_arm64::msr!("S3_0_C2_C1_2", k[2]);
        vmm_arm64::msr!("S3_0_C2_C1_3", k[3]);
        vmm_arm64::msr!("S3_0_C2_C2_0", k[4]);
        vmm_arm64::msr!("S3_0_C2_C2_1", k[5]);
        vmm_arm64::msr!("S3_0_C2_C2_2", k[6]);
        vmm_arm64::msr!("S3_0_C2_C2_3", k[7]);
        vmm_arm64::msr!("S3_0_C2_C3_0", k[8]);
        vmm_arm64::msr!("S3_0_C2_C3_1", k[9]);
    }
    vmm_arm64::barrier::isb();
}

static PAC_IMAGE: vmm_core::sync::SpinLock<&'static [u8]> = vmm_core::sync::SpinLock::new_spin(&[]);

/// The guest of tests/guests/pac_keys.S through VM_RUN on this CPU (VM `tb-pac<cpu>`,
/// `vmm` a `&Core` as an integer, for `cpu::post`): its keys, seeded per CPU, survive
/// 1000 exits, and the host's own keys, set to other values around every VM_RUN, come
/// back intact. Returns 0, 1000 + what the guest found changed, 2 (host keys changed)
/// or another failure code.
pub fn pac_on_this_cpu(vmm: u64) -> u64 {
    // SAFETY: the caller passes a &Core that outlives the call (it waits for us).
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    let me = crate::kernel::cpu::id() as u64;
    let image = *PAC_IMAGE.lock();
    let seed = 0x5eed_0000_0000_0001 + (me << 40);
    hvc_rounds(
        vmm,
        &format!("tb-pac{me}"),
        image,
        (1000, Some(seed)),
        |round, run| {
            let host: [u64; 10] = core::array::from_fn(|i| {
                0xa5a5_0000_0000_0000 ^ (me << 32) ^ (round << 8) ^ i as u64
            });
            write_pac_keys(&host);
            let e = run();
            let after = read_pac_keys();
            write_pac_keys(&[0; 10]);
            (e, after == host)
        },
    )
}

pub fn set_pac_image(image: &'static [u8]) {
    *PAC_IMAGE.lock() = image;
}

pub fn set_fp_image(image: &'static [u8]) {
    *FP_IMAGE.lock() = image;
}

/// The sysreg guest through VM_RUN: its ID register reads (TID3) and OSLAR_EL1 write
/// (TDOSA) are answered inside the kernel; the only exit that reaches the caller is the
/// final `hvc #2`, with the guest's view of ID_AA64PFR0 (EL0/EL1 AArch64, no EL2/EL3).
pub fn sysreg_in_kernel(vmm: &Core, image: &[u8]) -> Result<String, String> {
    let name = b"tb-sysreg";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        run_to_done(vmm, name, "reached the caller")?;
        let pfr0 = get_reg(vmm, name, VM_REG_GUEST_X0)?;
        let mmfr0 = get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?;
        if pfr0 & 0xffff != 0x0011 {
            return Err(format!(
                "guest ID_AA64PFR0 {pfr0:#x}: want EL0/EL1 AArch64 only"
            ));
        }
        if mmfr0 & 0xf > 2 {
            return Err(format!(
                "guest ID_AA64MMFR0 {mmfr0:#x}: PARange beyond the IPA space"
            ));
        }
        Ok(format!("ID reads (PFR0 {pfr0:#x}, MMFR0 {mmfr0:#x}) and the OSLAR write answered in the kernel"))
    })
}

/// Counter `s` of vCPU `cpu` of VM `name` (VM_STATS).
pub fn stat(vmm: &Core, name: &[u8], cpu: i32, s: vmm_core::stats::Stat) -> Result<u64, String> {
    let mut st = VmStats {
        cpuid: cpu,
        ..Default::default()
    };
    vm_ioctl(vmm, name, VM_STATS, &mut st)?;
    st.statbuf
        .get(s as usize)
        .copied()
        .ok_or_else(|| format!("no counter {}", s as usize))
}

/// vCPU 0 of VM `name` had `want.0` accesses answered by the EL2 code and `want.1`
/// by the core (its counter `in_core`).
fn answered_where(
    vmm: &Core,
    name: &[u8],
    in_core: vmm_core::stats::Stat,
    want: (u64, u64),
) -> Result<(), String> {
    let got = (
        stat(vmm, name, 0, vmm_core::stats::Stat::SysRegEl2)?,
        stat(vmm, name, 0, in_core)?,
    );
    if got != want {
        return Err(format!(
            "{} accesses answered at EL2 and {} by the core, want {} and {}",
            got.0, got.1, want.0, want.1
        ));
    }
    Ok(())
}

/// The el2_answers guest through VM_RUN: its seven ID, debug and OS-lock register
/// accesses are answered by the EL2 code in the guest's world (counted as such, none
/// by the core), into the right registers (x30 and XZR included), and every other
/// register comes back as the guest left it.
pub fn sysreg_at_el2(vmm: &Core, image: &[u8]) -> Result<String, String> {
    use vmm_core::stats::Stat;
    let name = b"tb-el2-answers";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        run_to_done(vmm, name, "reached the caller")?;
        let x: alloc::vec::Vec<u64> = (0..31)
            .map(|n| get_reg(vmm, name, VM_REG_GUEST_X0 + n))
            .collect::<Result<_, _>>()?;
        let host = vmm_arm64::IdRegs::read();
        let (isar0, mmfr0, oslsr, pfr0) = (x[9], x[30], x[17], x[18]);
        if isar0 != host.isar0 {
            return Err(format!(
                "ID_AA64ISAR0 {isar0:#x}, want the host's {:#x}",
                host.isar0
            ));
        }
        if pfr0 & 0xffff != 0x0011 || mmfr0 & 0xf > 2 {
            return Err(format!(
                "PFR0 {pfr0:#x} MMFR0 {mmfr0:#x}: not the guest's view"
            ));
        }
        if oslsr != vmm_core::sysemul::OSLSR_VALUE {
            return Err(format!("OSLSR_EL1 {oslsr:#x}"));
        }
        for (n, v) in x.iter().enumerate() {
            if ![9, 17, 18, 30].contains(&n) && *v != 0x700 + n as u64 {
                return Err(format!(
                    "x{n} = {v:#x} after the answers, want {:#x}",
                    0x700 + n
                ));
            }
        }
        answered_where(vmm, name, Stat::SysRegKernel, (7, 0))?;
        Ok(format!(
            "7 accesses answered at EL2 (ISAR0 {isar0:#x}, MMFR0 {mmfr0:#x} into x30, PFR0 into xzr and x18, OSLSR {oslsr:#x}, two writes), the other registers intact"
        ))
    })
}

/// VM_SET_MMIO_SHORTCUT for each `(gpa, value, flags)` of VM `name`.
pub fn set_shortcuts(vmm: &Core, name: &[u8], regs: &[(u64, u32, u32)]) -> Result<(), String> {
    for &(gpa, value, flags) in regs {
        let mut s = VmMmioShortcut {
            gpa,
            value,
            flags,
            ..Default::default()
        };
        vm_ioctl(vmm, name, VM_SET_MMIO_SHORTCUT, &mut s)?;
    }
    Ok(())
}

/// The mmio_answers guest through VM_RUN with two registers answered and one queued:
/// its five loads of answered registers are answered by the EL2 code in the guest's
/// world (counted as such), into the right registers with the load's width and sign
/// extension (x30, x18 and XZR included); the load of another register is an INST_EMUL
/// exit as before; its first store opens the queue in the core, the four after it
/// (a byte, a halfword, words from x18 and WZR) are queued by the EL2 code; all five are
/// handed over in order at BOGUS exits before the final hvc; every other register comes
/// back as the guest left it.
pub fn mmio_answers_at_el2(vmm: &Core, image: &[u8]) -> Result<String, String> {
    use vmm_core::stats::Stat;
    let name = b"tb-mmio-answers";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        set_shortcuts(
            vmm,
            name,
            &[
                (0x10018, 0x8190, MMIO_ANSWER_LOADS),
                (0x10028, 0x7f, MMIO_ANSWER_LOADS),
                (0x10000, 0, MMIO_BUFFER_STORES),
            ],
        )?;
        let e = run(vmm, name)?;
        // SAFETY: checked to be an INST_EMUL exit first.
        if e.exitcode != ExitCode::InstEmul as i32 || unsafe { e.u.inst_emul.gpa } != 0x10020 {
            return Err(format!(
                "exit code {} at pc {:#x}, want the load of 0x10020",
                e.exitcode, e.pc
            ));
        }
        set_reg(vmm, name, VM_REG_GUEST_X0 + 16, 0x55)?;
        // The stores come at BOGUS exits: one, or more if the queue's deadline kicked
        // the vCPU out between them (each then reopened by the core).
        let mut stores = alloc::vec::Vec::new();
        let mut takes = 0u64;
        let mut st = alloc::boxed::Box::new(VmMmioStores::default());
        loop {
            let e = run(vmm, name)?;
            if e.exitcode != ExitCode::Bogus as i32 {
                return Err(format!(
                    "exit code {} after {} stores taken, want BOGUS until all 5",
                    e.exitcode,
                    stores.len()
                ));
            }
            vm_ioctl(vmm, name, VM_GET_MMIO_STORES, &mut *st)?;
            let n = st.count as usize;
            if n != 0 {
                takes += 1;
            }
            stores.extend(st.stores.iter().take(n).map(|s| (s.gpa, s.size, s.value)));
            if stores.len() >= 5 {
                break;
            }
        }
        let want = [
            (0x10000, 4, 0x703),
            (0x10000, 1, 0x02),
            (0x10000, 2, 0x8190),
            (0x10000, 4, 0xffff_8190),
            (0x10000, 4, 0),
        ];
        if stores != want {
            return Err(format!("stores taken {stores:x?}, want {want:x?}"));
        }
        run_to_done(vmm, name, "the held hvc #2 after the BOGUS")?;
        let x: alloc::vec::Vec<u64> = (0..31)
            .map(|n| get_reg(vmm, name, VM_REG_GUEST_X0 + n))
            .collect::<Result<_, _>>()?;
        let want = [
            (9, 0x90),
            (30, 0xffff_ffff_ffff_8190),
            (18, 0xffff_8190),
            (17, 0x7f),
            (16, 0x55),
        ];
        for (n, v) in x.iter().enumerate() {
            let w = want
                .iter()
                .find(|w| w.0 == n)
                .map_or(0x700 + n as u64, |w| w.1);
            if *v != w {
                return Err(format!("x{n} = {v:#x}, want {w:#x}"));
            }
        }
        let counts = [
            Stat::MmioEl2,
            Stat::MmioAnswered,
            Stat::MmioQueued,
            Stat::InstEmul,
        ]
        .map(|s| stat(vmm, name, 0, s));
        let counts = counts
            .into_iter()
            .collect::<Result<alloc::vec::Vec<_>, _>>()?;
        // Each take's first store was the core's: it opened the queue.
        let want = [5 + 5 - takes, 5, 5, 1];
        if counts != want {
            return Err(format!(
                "handled at EL2, loads answered, stores queued, INST_EMUL: {counts:?}, want {want:?} ({takes} takes)"
            ));
        }
        Ok(format!("5 loads answered at EL2 (ldrb, ldrsh into x30 and w18, into wzr, a second register), one INST_EMUL, 5 stores queued ({} at EL2: strb, strh, str of x18 and wzr) and taken in order in {takes} BOGUS exits, the other registers intact", 5 - takes))
    })
}

/// The ptimer guest through VM_RUN: its physical-timer writes are the core's, its reads
/// the EL2 code's, which give what the core's emulation holds: ENABLE and IMASK as
/// written, ISTATUS only once the count passed CVAL, the CVAL written, TVAL = CVAL -
/// count. Counted as such (three by the core, five at EL2).
pub fn ptimer_reads_at_el2(vmm: &Core, image: &[u8]) -> Result<String, String> {
    use vmm_core::stats::Stat;
    use vmm_core::vtimer::{CTL_ENABLE, CTL_IMASK, CTL_ISTATUS};
    let name = b"tb-ptimer";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        run_to_done(vmm, name, "reached the caller")?;
        let x: alloc::vec::Vec<u64> = (0..8)
            .map(|n| get_reg(vmm, name, VM_REG_GUEST_X0 + n))
            .collect::<Result<_, _>>()?;
        let (ctl, cval, tval, before, ctl_due, tval_due, armed) =
            (x[1], x[2], x[3], x[4], x[5], x[6], x[7]);
        if ctl != CTL_ENABLE | CTL_IMASK {
            return Err(format!(
                "CTL {ctl:#x} while armed in the future, want {:#x}",
                CTL_ENABLE | CTL_IMASK
            ));
        }
        if cval != armed {
            return Err(format!("CVAL {cval:#x}, written {armed:#x}"));
        }
        // Low 32 bits of CVAL - count: 2^40 ahead gives (2^40 - elapsed) mod 2^32.
        let want_tval = armed.wrapping_sub(before) & 0xffff_ffff;
        let elapsed = want_tval.wrapping_sub(tval) & 0xffff_ffff;
        if tval >> 32 != 0 || elapsed > timer::freq() {
            return Err(format!(
                "TVAL {tval:#x}, want about {want_tval:#x} (the count moved {elapsed} ticks?)"
            ));
        }
        if ctl_due != CTL_ENABLE | CTL_IMASK | CTL_ISTATUS {
            return Err(format!(
                "CTL {ctl_due:#x} once due, want ISTATUS shown through IMASK"
            ));
        }
        // CVAL 0: TVAL is minus the count, low 32 bits.
        if tval_due >> 32 != 0 || tval_due == 0 {
            return Err(format!("TVAL {tval_due:#x} once due"));
        }
        answered_where(vmm, name, Stat::TimerKernel, (5, 3))?;
        Ok(format!(
            "5 reads answered at EL2 (CTL {ctl:#x}, then {ctl_due:#x} once due; CVAL and TVAL as the core holds them), 3 writes by the core"
        ))
    })
}

/// The host's own SVE and pointer-authentication state around a guest's run, on a
/// VHE host with those features (the testbed kernel at EL2): set to known values before,
/// compared bit for bit after. SVE: the vector length (ZCR_EL2.LEN 3: 512 bits), Z0
/// and Z31 filled with patterns across the whole vector, P15 all true, FFR all false.
/// Pointer authentication: all five keys.
struct HostFeatureState {
    sve: bool,
    pac: bool,
}

const HOST_PAC_KEYS: [u64; 10] = [
    0x0123_4567_89ab_cdef,
    0xfedc_ba98_7654_3210,
    0x1111_2222_3333_4444,
    0x5555_6666_7777_8888,
    0x9999_aaaa_bbbb_cccc,
    0xdddd_eeee_ffff_0000,
    0x0f0f_0f0f_f0f0_f0f0,
    0x3c3c_3c3c_c3c3_c3c3,
    0x6969_9696_6969_9696,
    0x7e7e_e7e7_7e7e_e7e7,
];
/// SVE vectors are at most 2048 bits.
const ZMAX: usize = 256;

impl HostFeatureState {
    fn set() -> HostFeatureState {
        let ids = vmm_arm64::IdRegs::read();
        let vhe = crate::kernel::cpu::vhe_host();
        let sve = vhe && (ids.pfr0 >> 32) & 0xf != 0;
        let pac = vhe && vmm_core::vcpu::host_has_pauth(&ids);
        if pac {
            write_pac_keys(&HOST_PAC_KEYS);
        }
        if sve {
            // SAFETY: enables SVE at EL2 for this CPU (CPTR_EL2.ZEN in the E2H layout,
            // reached as CPACR_EL1), sets a 512-bit vector length (ZCR_EL2, reached as
            // ZCR_EL1) and fills registers the testbed's code never uses.
            unsafe {
                core::arch::asm!(
                    ".arch_extension sve",
                    "mrs {t}, cpacr_el1",
                    "orr {t}, {t}, #(3 << 16)",
                    "msr cpacr_el1, {t}",
                    "isb",
                    "mov {t}, #3",
                    "msr S3_0_C1_C2_0, {t}",
                    "isb",
                    "index z0.b, #1, #3",
                    "index z31.b, #-7, #5",
                    "ptrue p15.b",
                    "setffr",
                    "pfalse p14.b",
                    "wrffr p14.b",
                    t = out(reg) _,
                )
            };
        }
        HostFeatureState { sve, pac }
    }

    fn what(&self) -> &'static str {
        match (self.sve, self.pac) {
            (true, true) => "SVE (512-bit Z0/Z31, P15, FFR, ZCR) and PAC keys intact",
            (true, false) => "SVE (512-bit Z0/Z31, P15, FFR, ZCR) intact",
            (false, true) => "PAC keys intact",
            (false, false) => "has neither SVE nor PAC",
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.pac {
            let keys = read_pac_keys();
            write_pac_keys(&[0; 10]);
            if keys != HOST_PAC_KEYS {
                return Err(format!("host PAC keys changed: {keys:#x?}"));
            }
        }
        if self.sve {
            let mut z0 = [0u8; ZMAX];
            let mut z31 = [0u8; ZMAX];
            let (zcr, vl, p15_count, ffr_count): (u64, u64, u64, u64);
            // SAFETY: reads this CPU's SVE state into buffers of the largest vector
            // size, then turns SVE at EL2 off again.
            unsafe {
                core::arch::asm!(
                    ".arch_extension sve",
                    "mrs {zcr}, S3_0_C1_C2_0",
                    "rdvl {vl}, #1",
                    "str z0, [{z0}]",
                    "str z31, [{z31}]",
                    "cntp {p}, p15, p15.b",
                    "rdffr p13.b",
                    "ptrue p12.b",
                    "cntp {f}, p12, p13.b",
                    "mrs {t}, cpacr_el1",
                    "bic {t}, {t}, #(3 << 16)",
                    "msr cpacr_el1, {t}",
                    "isb",
                    zcr = out(reg) zcr, vl = out(reg) vl, p = out(reg) p15_count,
                    f = out(reg) ffr_count, t = out(reg) _,
                    z0 = in(reg) z0.as_mut_ptr(), z31 = in(reg) z31.as_mut_ptr(),
                )
            };
            if zcr & 0xf != 3 || vl != 64 {
                return Err(format!(
                    "host ZCR_EL2 {zcr:#x}, vector length {vl} bytes: want LEN 3, 64 bytes"
                ));
            }
            for i in 0..64usize {
                let want0 = (1 + 3 * i) as u8;
                let want31 = (-7i32 + 5 * i as i32) as u8;
                if z0[i] != want0 || z31[i] != want31 {
                    return Err(format!(
                        "host Z registers changed at byte {i}: Z0 {:#04x} (want {want0:#04x}), Z31 {:#04x} (want {want31:#04x})",
                        z0[i], z31[i]
                    ));
                }
            }
            if p15_count != 64 || ffr_count != 0 {
                return Err(format!(
                    "host predicates changed: P15 has {p15_count} of 64 true, FFR {ffr_count} (want 0)"
                ));
            }
        }
        Ok(())
    }
}

/// The guest of tests/guests/hidden.S uses every feature it is not shown: SVE, SME,
/// pointer authentication (instruction and key register), LORegions must be UNDEFINED
/// (bits 0..=6; bit 7, a plain UDF, proves the detection); ERRIDR_EL1 reads as zero
/// where the host has RAS (UNDEFINED where it has none); ACTLR_EL1 reads as zero
/// (TACR); no other exception. The host's own SVE and PAC state is compared around it
/// (`HostFeatureState`).
pub fn hidden_features(vmm: &Core, image: &[u8]) -> Result<String, String> {
    let name = b"tb-hidden";
    start(vmm, name, image, 0)?;
    with_vm(vmm, name, || {
        let host = HostFeatureState::set();
        let e = run(vmm, name);
        let host_after = host.check();
        let e = e?;
        host_after?;
        if hvc_of(&e) != Some(2) {
            return Err(format!(
                "exit code {} pc {:#x} reached the caller",
                e.exitcode, e.pc
            ));
        }
        let undef = get_reg(vmm, name, VM_REG_GUEST_X0)?;
        let read = get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?;
        let other = get_reg(vmm, name, VM_REG_GUEST_X0 + 2)?;
        if other != 0 {
            return Err(format!("an exception other than UNDEF: ESR {other:#x}"));
        }
        // Pointer authentication (bits 4, 5) is shown where the host has it (the guest
        // runs with its own keys) and UNDEFINED where it has none.
        const PAC_PROBES: u64 = 0b11 << 4;
        let pauth = vmm_core::vcpu::host_has_pauth(&vmm_arm64::IdRegs::read());
        let must_undef: u64 = (0xff | (0b11 << 12)) & if pauth { !PAC_PROBES } else { !0 };
        if undef & must_undef != must_undef {
            return Err(format!(
                "probes {:#06x} of {must_undef:#06x} were not UNDEFINED (bit 0 SVE, 1 ZCR_EL1, 2 SME, 3 SMCR_EL1, 4 PACIA, 5 APIAKeyLo_EL1, 6 LORID_EL1, 7 UDF, 12 GMID_EL1, 13 GCR_EL1)",
                undef & must_undef
            ));
        }
        if pauth && undef & PAC_PROBES != 0 {
            return Err(format!(
                "PACIA or APIAKeyLo_EL1 refused ({:#x}) on a host whose PAC the guest is shown",
                undef & PAC_PROBES
            ));
        }
        // ERRIDR_EL1 (bit 8) reads as zero where the host has RAS and is UNDEFINED where
        // it has none. ERRSELR_EL1 (bits 9 and 11) may be UNDEFINED even with RAS: QEMU's
        // minimal RAS has no error records to select; either answer reaches no host state.
        let host_ras = (vmm_arm64::IdRegs::read().pfr0 >> 28) & 0xf != 0;
        let erridr_undef = undef & (1 << 8) != 0;
        if host_ras == erridr_undef {
            return Err(format!(
                "ERRIDR_EL1 {} on a host {} RAS",
                if erridr_undef { "UNDEFINED" } else { "read" },
                if host_ras { "with" } else { "without" }
            ));
        }
        if undef & (1 << 10) != 0 || read != 0 {
            return Err(format!(
                "ACTLR_EL1 or the error records did not read as zero (UNDEF {undef:#x}, read {read:#x})"
            ));
        }
        let mte = (vmm_arm64::IdRegs::read().pfr1 >> 8) & 0xf;
        Ok(format!(
            "SVE, ZCR_EL1, SME, SMCR_EL1, LORID_EL1, GMID_EL1, GCR_EL1 UNDEFINED (host MTE level {mte}); PACIA and APIAKeyLo_EL1 {}; error records {}; ACTLR_EL1 read as zero; host {}",
            if pauth { "run (PAC shown, the guest's own keys)" } else { "UNDEFINED (no PAC)" },
            if host_ras { "read as zero (host has RAS)" } else { "UNDEFINED (no RAS)" },
            host.what()
        ))
    })
}

/// The guest of tests/guests/mte_tags.S on a host with MTE tag storage (MTE level 2 or
/// more): with its MMU on, its RAM Normal Tagged and SCTLR_EL1.ATA set, its STG of tag 5
/// and LDG back read tag 0, and IRG (tag 0 excluded) gives tag 0: HCR_EL2.ATA clear keeps
/// every EL1 tag access away from tag storage. `None` on a host without tag storage.
pub fn mte_tags(vmm: &Core, image: &[u8]) -> Option<Result<String, String>> {
    let level = (vmm_arm64::IdRegs::read().pfr1 >> 8) & 0xf;
    if level < 2 {
        return None;
    }
    let name = b"tb-mte";
    Some(start(vmm, name, image, 0).and_then(|()| {
        with_vm(vmm, name, || {
            let e = run(vmm, name)?;
            if hvc_of(&e) != Some(2) {
                return Err(format!(
                    "exit code {} pc {:#x} reached the caller",
                    e.exitcode, e.pc
                ));
            }
            let ldg = get_reg(vmm, name, VM_REG_GUEST_X0)?;
            let irg = get_reg(vmm, name, VM_REG_GUEST_X0 + 1)?;
            let other = get_reg(vmm, name, VM_REG_GUEST_X0 + 2)?;
            if other != 0 {
                return Err(format!("the guest took an exception: ESR {other:#x}"));
            }
            if (ldg, irg) != (0, 0) {
                return Err(format!(
                    "the guest reached tag storage: LDG read tag {ldg} after STG of 5 (want 0), IRG gave {irg} (want 0)"
                ));
            }
            Ok(format!(
                "host MTE level {level}: the guest's STG of tag 5 then LDG read tag 0, IRG gave tag 0, no exception"
            ))
        })
    }))
}

static KICK_RESULT: AtomicI32 = AtomicI32::new(i32::MIN);
/// The `how` of the SUSPENDED exit that ended `kick_runner`'s VM_RUN.
static KICK_HOW: AtomicI32 = AtomicI32::new(i32::MIN);

/// The kick guest: `mov x1, #1; str x1, [x0]; b .` -- it writes 1 to the flag whose
/// guest address it gets in x0 (so the host knows it really runs), then spins without
/// ever exiting by itself.
const KICK_GUEST: [u32; 3] = [0xd280_0021, 0xf900_0001, 0x1400_0000];
/// The flag's guest physical address (same RAM page as the code, another cache line).
const KICK_FLAG_GPA: u64 = 0x8000_0100;
/// How long the guest may take to start on cpu 1: QEMU's thread for that CPU can be
/// descheduled for a long time on a loaded host; a guest that never starts still fails.
const KICK_START_SECS: u64 = 30;

/// On the other CPU: VM_RUN of the spinning VM `tb-kick` until it returns.
fn kick_runner(vmm: u64) -> u64 {
    // SAFETY: destroy_kicks_running_vcpu passes a &Core it keeps alive until wait().
    let vmm: &Core = unsafe { &*(vmm as *const Core) };
    let (code, how) = match run(vmm, b"tb-kick") {
        Ok(e) if e.exitcode == ExitCode::Suspended as i32 => {
            // SAFETY: a SUSPENDED exit fills the suspended member.
            (e.exitcode, unsafe { e.u.suspended.how })
        }
        Ok(e) => (e.exitcode, -1),
        Err(_) => (-1, -1),
    };
    KICK_HOW.store(how, Ordering::SeqCst);
    KICK_RESULT.store(code, Ordering::SeqCst);
    0
}

/// The flag word through the host's mapping of guest RAM. The guest runs with its MMU
/// off, so its store is non-cacheable: clean and invalidate the host's line first so the
/// read reaches memory (a no-op under QEMU, which has no caches; right on hardware).
fn read_guest_word(va: *mut u8) -> u64 {
    // SAFETY: `va` maps 8 bytes of the live VM's RAM (gpa_to_pa); cleaning a mapped
    // kernel address only moves a cache line to memory.
    unsafe {
        vmm_arm64::cache::clean_inval_dcache_poc(va as usize, 8);
        core::ptr::read_volatile(va as *const u64)
    }
}

/// Destroying a VM whose vCPU is in the guest on the other CPU: the core kicks that
/// CPU (Host::kick_cpu, an SGI), the guest exits with an IRQ exit, VM_RUN returns
/// SUSPENDED with how = DESTROY, and the destroy completes.
///
/// The destroy waits until the guest has written its flag: a destroy that unlists the
/// VM before cpu 1's VM_RUN has looked it up is a legitimate ENOENT (as on FreeBSD,
/// where the cdev is gone), and one that lands between the lookup and the guest entry
/// returns SUSPENDED without any kick -- neither is what this test is about.
pub fn destroy_kicks_running_vcpu(vmm: &Core, ncpu: usize) -> Result<String, String> {
    if ncpu < 2 {
        return Err("needs two cpus".into());
    }
    let mut image = [0u8; 12];
    for (b, w) in image.chunks_exact_mut(4).zip(KICK_GUEST) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    start(vmm, b"tb-kick", &image, KICK_FLAG_GPA)?;
    let (_, flag, _) = match vmm.gpa_to_pa(b"tb-kick", KICK_FLAG_GPA) {
        Some(m) => m,
        None => {
            destroy(vmm, b"tb-kick")?;
            return Err("gpa_to_pa of the flag".into());
        }
    };
    // SAFETY: `flag` maps 8 bytes of the VM's RAM; nothing runs the guest yet. Written
    // and cleaned so no dirty host line can later overwrite the guest's store.
    unsafe {
        core::ptr::write_volatile(flag as *mut u64, 0);
        vmm_arm64::cache::clean_inval_dcache_poc(flag as usize, 8);
    }
    KICK_RESULT.store(i32::MIN, Ordering::SeqCst);
    KICK_HOW.store(i32::MIN, Ordering::SeqCst);
    crate::kernel::cpu::post(1, kick_runner, vmm as *const Core as u64);
    let t0 = timer::now();
    while read_guest_word(flag) != 1 {
        if KICK_RESULT.load(Ordering::SeqCst) != i32::MIN {
            let code = KICK_RESULT.load(Ordering::SeqCst);
            crate::kernel::cpu::wait(1);
            destroy(vmm, b"tb-kick")?;
            return Err(format!(
                "VM_RUN on cpu 1 ended with {code} before the guest ran"
            ));
        }
        if timer::now() - t0 > timer::freq() * KICK_START_SECS {
            // The vCPU may yet start: the destroy still stops it, or hangs to the
            // harness's QEMU timeout, which also fails.
            destroy(vmm, b"tb-kick")?;
            crate::kernel::cpu::wait(1);
            return Err(format!(
                "the guest did not run on cpu 1 within {KICK_START_SECS} s"
            ));
        }
        crate::kernel::cpu::relax();
    }
    let started_us = (timer::now() - t0) * 1_000_000 / timer::freq();
    // The guest is in its `b .` now. Count the core's Host::kick_cpu(1) calls, not SGIs
    // taken on cpu 1: wakeup() broadcasts the same SGI, which alone would make the guest
    // exit, so an SGI count passes even with the kick path broken.
    let kicks_before = host::KICKS[1].load(Ordering::SeqCst);
    if KICK_RESULT.load(Ordering::SeqCst) != i32::MIN {
        return Err("VM_RUN returned before the destroy".into());
    }
    destroy(vmm, b"tb-kick")?;
    crate::kernel::cpu::wait(1);
    let code = KICK_RESULT.load(Ordering::SeqCst);
    let how = KICK_HOW.load(Ordering::SeqCst);
    let kicks = host::KICKS[1].load(Ordering::SeqCst) - kicks_before;
    if code != ExitCode::Suspended as i32 || how != SuspendHow::Destroy as i32 {
        return Err(format!(
            "VM_RUN on cpu 1 ended with exit code {code} how {how}, want SUSPENDED ({}) how DESTROY ({})",
            ExitCode::Suspended as i32,
            SuspendHow::Destroy as i32
        ));
    }
    if kicks == 0 {
        return Err("the core never kicked cpu 1 (Host::kick_cpu) for the destroy".into());
    }
    Ok(format!("destroy while the vCPU ran on cpu 1 (guest started after {started_us} us): {kicks} kick(s) of cpu 1, VM_RUN returned SUSPENDED how DESTROY, destroy completed"))
}

/// After `unload`: a second `Vmm::new` works and runs a guest; then shut down again.
pub fn reload(image: &[u8]) -> Result<String, String> {
    let vmm = load()?;
    let r = hvc_through_dispatch(&vmm, image, 10);
    unload(vmm)?;
    r.map(|d| format!("second Vmm::new: {d}; second shutdown"))
}
