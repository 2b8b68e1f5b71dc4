//! Tests through vmm-kmod's core: `Vmm::new` brings EL2 up with the testbed's `Host`,
//! every VM operation is an ioctl through `Vmm::dispatch` (argument bytes and pointers
//! exactly as /dev/vmm gets them), `Vmm::shutdown` takes EL2 down.

extern crate alloc;
use crate::host::{self, TestbedHost};
use crate::{mm, timer};
use alloc::format;
use alloc::string::String;
use vmm_kmod::{DeviceRef, Vmm};
use vmm_sys::abi::*;
use vmm_sys::exit::ExitCode;
use vmm_sys::ioctl::*;
use vmm_sys::reg::{VM_REG_GUEST_PC, VM_REG_GUEST_X0};

pub type Core = Vmm<TestbedHost>;

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
    if !image.is_empty() {
        let (_, va, len) = vmm.gpa_to_pa(name, 0x8000_0000).ok_or("gpa_to_pa")?;
        if (len as usize) < image.len() {
            return Err("guest memory run too short".into());
        }
        // SAFETY: `va` is the kernel address of at least `len` bytes of guest memory.
        unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), va, image.len()) };
        // SAFETY: barriers and I-cache invalidation for the code just written.
        unsafe { core::arch::asm!("dsb ish", "ic ialluis", "dsb ish", "isb") };
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
