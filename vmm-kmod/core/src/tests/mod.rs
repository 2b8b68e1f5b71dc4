//! Host unit tests of the core over the fake host.
// Test code: a panic here is a test failure.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::panic,
    clippy::expect_used
)]

mod decode;
mod dispatch;
mod isolation;
mod run;
mod stage2;
mod vgic;
mod vgic_model;

use crate::fake::{params, FakeHost};
use crate::{DeviceRef, Errno, KResult, Vmm};
use vmm_sys::abi::*;
use vmm_sys::ioctl;

pub const RAM: u64 = 0x8000_0000;

pub fn vmm() -> Vmm<FakeHost> {
    Vmm::new(FakeHost::new(64, 2), params()).ok().unwrap()
}

/// Sends `req` on /dev/vmmctl and reads it back.
pub fn ctl<T: Pod>(v: &Vmm<FakeHost>, cmd: u64, req: &mut T) -> KResult<()> {
    let mut b = req.as_bytes().to_vec();
    let r = v.dispatch(DeviceRef::Ctl, cmd, &mut b);
    *req = T::from_bytes(&b).unwrap();
    r
}

/// Sends `req` on /dev/vmm/NAME and reads it back.
pub fn vmio<T: Pod>(v: &Vmm<FakeHost>, name: &str, cmd: u64, req: &mut T) -> KResult<()> {
    let mut b = req.as_bytes().to_vec();
    let r = v.dispatch(DeviceRef::Vm(name.as_bytes()), cmd, &mut b);
    *req = T::from_bytes(&b).unwrap();
    r
}

pub fn create(v: &Vmm<FakeHost>, name: &str) -> KResult<()> {
    let mut req = VmmctlVmCreate::new(name.as_bytes()).unwrap();
    ctl(v, ioctl::VMMCTL_VM_CREATE, &mut req)
}

pub fn destroy(v: &Vmm<FakeHost>, name: &str) -> KResult<()> {
    let mut req = VmmctlVmCreate::new(name.as_bytes()).unwrap();
    ctl(v, ioctl::VMMCTL_VM_DESTROY, &mut req)
}

pub fn alloc_seg(v: &Vmm<FakeHost>, name: &str, segid: i32, len: u64) -> KResult<()> {
    let mut req = VmMemseg {
        segid,
        len,
        ..Default::default()
    };
    vmio(v, name, ioctl::VM_ALLOC_MEMSEG, &mut req)
}

pub fn mmap(
    v: &Vmm<FakeHost>,
    name: &str,
    gpa: u64,
    segid: i32,
    segoff: u64,
    len: u64,
    prot: i32,
) -> KResult<()> {
    let mut req = VmMemmap {
        gpa,
        segid,
        segoff,
        len,
        prot,
        flags: 0,
        ..Default::default()
    };
    vmio(v, name, ioctl::VM_MMAP_MEMSEG, &mut req)
}

pub fn activate(v: &Vmm<FakeHost>, name: &str, cpu: i32) -> KResult<()> {
    let mut req = VmActivateCpu { vcpuid: cpu };
    vmio(v, name, ioctl::VM_ACTIVATE_CPU, &mut req)
}

/// A VM with `mib` MiB of RAM at 2 GiB (RWX) and vCPU 0 active.
pub fn setup(v: &Vmm<FakeHost>, name: &str, mib: u64) {
    create(v, name).unwrap();
    alloc_seg(v, name, 0, mib << 20).unwrap();
    mmap(v, name, RAM, 0, 0, mib << 20, PROT_ALL).unwrap();
    activate(v, name, 0).unwrap();
}

pub fn set_reg(v: &Vmm<FakeHost>, name: &str, cpu: i32, regnum: u32, val: u64) -> KResult<()> {
    let mut req = VmRegister {
        cpuid: cpu,
        regnum: regnum as i32,
        regval: val,
    };
    vmio(v, name, ioctl::VM_SET_REGISTER, &mut req)
}

pub fn get_reg(v: &Vmm<FakeHost>, name: &str, cpu: i32, regnum: u32) -> KResult<u64> {
    let mut req = VmRegister {
        cpuid: cpu,
        regnum: regnum as i32,
        regval: 0,
    };
    vmio(v, name, ioctl::VM_GET_REGISTER, &mut req).map(|_| req.regval)
}

/// VM_RUN through the dispatcher, with the exit and the cpuset read back from fake
/// user memory.
pub fn run(v: &Vmm<FakeHost>, name: &str, cpu: i32) -> KResult<(VmExit, u32)> {
    let exit_buf = v.host().user_alloc(80);
    let set_buf = v.host().user_alloc(16);
    let mut req = VmRun {
        cpuid: cpu,
        cpuset: set_buf,
        cpusetsize: 16,
        vm_exit: exit_buf,
        ..Default::default()
    };
    vmio(v, name, ioctl::VM_RUN, &mut req)?;
    let e = VmExit::from_bytes(&v.host().user_read(exit_buf, 80)).unwrap();
    let set = v.host().user_read(set_buf, 4);
    Ok((e, u32::from_le_bytes(set.try_into().unwrap())))
}

pub fn exitcode(e: &VmExit) -> vmm_sys::exit::ExitCode {
    vmm_sys::exit::ExitCode::try_from(e.exitcode).unwrap()
}

#[test]
fn errno_values_are_freebsds() {
    assert_eq!(
        [
            Errno::EPERM,
            Errno::ENOENT,
            Errno::ENXIO,
            Errno::E2BIG,
            Errno::ENOMEM,
            Errno::EFAULT,
            Errno::EBUSY,
            Errno::EEXIST,
            Errno::ENODEV,
            Errno::EINVAL,
            Errno::ENOTTY
        ]
        .map(|e| e.0),
        [1, 2, 6, 7, 12, 14, 16, 17, 19, 22, 25]
    );
}

/// The glue keeps one `Vmm` in a static and calls it from every CPU and thread.
#[test]
fn vmm_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Vmm<FakeHost>>();
    check::<crate::vm::Vm<FakeHost>>();
}
