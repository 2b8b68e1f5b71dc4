//! What the fuzz targets share: vmm-core's dispatcher over its fake host, driven the way
//! /dev/vmm's callers drive it. Every target asserts invariants, not only "no panic"
//! (docs/fuzzing.md lists them per target).

use vmm_core::fake::{params, FakeHost};
use vmm_core::{DeviceRef, KResult, Vmm};
use vmm_sys::abi::*;
use vmm_sys::ioctl;

pub type Core = Vmm<FakeHost>;

/// Guest RAM's base (the platform's).
pub const RAM: u64 = vmm_platform::RAM_BASE_DEFAULT;

/// A loaded core over a fake host with 32 MiB of physical memory and two CPUs, with a
/// 16 MiB limit on guest memory (so that both the limit and the host's own shortage are
/// reached).
pub fn core() -> Core {
    let mut p = params();
    p.max_guest_mem = 16 << 20;
    match Vmm::new(FakeHost::new(32, 2), p) {
        Ok(v) => v,
        Err((_, e)) => panic!("the core does not load on the fake host: {e:?}"),
    }
}

/// Sends `req` to /dev/vmm/NAME (or /dev/vmmctl for `None`) and reads it back.
pub fn request<T: Pod>(v: &Core, name: Option<&str>, cmd: u64, req: &mut T) -> KResult<()> {
    let mut b = req.as_bytes().to_vec();
    let dev = match name {
        Some(n) => DeviceRef::Vm(n.as_bytes()),
        None => DeviceRef::Ctl,
    };
    let r = v.dispatch(dev, cmd, &mut b);
    if let Some(back) = T::from_bytes(&b) {
        *req = back;
    }
    r
}

pub fn create(v: &Core, name: &str) -> KResult<()> {
    let mut req = VmmctlVmCreate::new(name.as_bytes()).ok_or(vmm_core::Errno::EINVAL)?;
    request(v, None, ioctl::VMMCTL_VM_CREATE, &mut req)
}

pub fn destroy(v: &Core, name: &str) -> KResult<()> {
    let mut req = VmmctlVmCreate::new(name.as_bytes()).ok_or(vmm_core::Errno::EINVAL)?;
    request(v, None, ioctl::VMMCTL_VM_DESTROY, &mut req)
}

/// VM `name` with `mib` MiB of RAM at [`RAM`] and vCPU 0 active, PC at RAM.
pub fn setup(v: &Core, name: &str, mib: u64) -> KResult<()> {
    create(v, name)?;
    let mut seg = VmMemseg {
        segid: 0,
        len: mib << 20,
        ..Default::default()
    };
    request(v, Some(name), ioctl::VM_ALLOC_MEMSEG, &mut seg)?;
    let mut map = VmMemmap {
        gpa: RAM,
        segid: 0,
        segoff: 0,
        len: mib << 20,
        prot: 7,
        flags: 0,
        ..Default::default()
    };
    request(v, Some(name), ioctl::VM_MMAP_MEMSEG, &mut map)?;
    let mut act = VmActivateCpu { vcpuid: 0 };
    request(v, Some(name), ioctl::VM_ACTIVATE_CPU, &mut act)?;
    let mut pc = VmRegister {
        cpuid: 0,
        regnum: vmm_sys::reg::VM_REG_GUEST_PC as i32,
        regval: RAM,
    };
    request(v, Some(name), ioctl::VM_SET_REGISTER, &mut pc)
}

/// One VM_RUN of vCPU `cpu`, its exit written to a user buffer of the fake process.
pub fn run(v: &Core, name: &str, cpu: i32) -> KResult<()> {
    let exit = v.host().user_alloc(256);
    let set = v.host().user_alloc(16);
    let mut req = VmRun {
        cpuid: cpu,
        cpuset: set,
        cpusetsize: 16,
        vm_exit: exit,
        ..Default::default()
    };
    let r = request(v, Some(name), ioctl::VM_RUN, &mut req);
    v.host().user_free(exit);
    v.host().user_free(set);
    r
}

/// Destroys every VM the core has, found with VMMCTL_VM_LIST as `bhyvectl --list` finds
/// them (a fuzzed VMMCTL_VM_CREATE may have made VMs of any name).
pub fn destroy_all(v: &Core) {
    let buf = v.host().user_alloc(64 << 10);
    let mut req = VmmctlVmList {
        buf,
        buflen: 64 << 10,
        ..Default::default()
    };
    let listed = request(v, None, ioctl::VMMCTL_VM_LIST, &mut req);
    let names = v.host().user_read(buf, req.needed.min(64 << 10) as usize);
    v.host().user_free(buf);
    assert!(listed.is_ok(), "VMMCTL_VM_LIST failed: {listed:?}");
    // Names are bytes (any but NUL, '/' and controls: not necessarily UTF-8).
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut req = VmmctlVmCreate::new(name).expect("a listed name fits");
        let r = request(v, None, ioctl::VMMCTL_VM_DESTROY, &mut req);
        assert!(r.is_ok(), "cannot destroy listed VM {name:x?}: {r:?}");
    }
}
