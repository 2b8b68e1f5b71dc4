//! The dispatcher's validation, VM lifecycle, memory, registers and module load/unload.

use super::*;
use crate::fake::{CpuEl2, FakeHost, EL2_TTBR0};
use crate::host::Host;
use std::sync::atomic::Ordering;
use vmm_sys::reg;

#[test]
fn load_brings_every_cpu_up_and_unload_restores_the_stub() {
    let v = vmm();
    let cpus = v.host().cpus.lock().unwrap().clone();
    assert_eq!(cpus.len(), 2);
    let mut tops = Vec::new();
    for c in &cpus {
        let CpuEl2::Up {
            stack_top,
            tcr,
            sctlr,
            vtcr,
        } = *c
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            (tcr, sctlr, vtcr),
            (
                v.el2_config().tcr_el2,
                v.el2_config().sctlr_el2,
                v.el2_config().vtcr_el2
            )
        );
        tops.push(stack_top);
    }
    assert_ne!(tops[0], tops[1], "one EL2 stack per CPU");
    assert_eq!(
        *v.host().vgic_cleared.lock().unwrap(),
        [true, true],
        "every CPU's list registers emptied at load"
    );
    create(&v, "busy").unwrap();
    assert_eq!(v.shutdown(), Err(Errno::EBUSY));
    destroy(&v, "busy").unwrap();
    v.shutdown().unwrap();
    assert!(v
        .host()
        .cpus
        .lock()
        .unwrap()
        .iter()
        .all(|c| *c == CpuEl2::Stub));
    assert_eq!(v.host().pages_in_use(), 0, "EL2 stacks freed");
    assert!(v.host().el2_mapped.lock().unwrap().is_empty());
    assert_eq!(create(&v, "late"), Err(Errno::ENXIO));
    assert_eq!(v.shutdown(), Err(Errno::ENXIO));
    // A second load on the same CPUs works.
    let h = v.into_host().ok().unwrap();
    let v2 = Vmm::new(h, crate::fake::params()).ok().unwrap();
    create(&v2, "again").unwrap();
    destroy(&v2, "again").unwrap();
    v2.shutdown().unwrap();
}

#[test]
fn failed_init_undoes_everything() {
    let h = FakeHost::new(4, 2);
    h.init_result.store(1, Ordering::SeqCst);
    let Err((h, e)) = Vmm::new(h, crate::fake::params()) else {
        panic!()
    };
    assert_eq!(e, Errno::ENXIO);
    assert!(
        h.cpus.lock().unwrap().iter().all(|c| *c == CpuEl2::Stub),
        "stub restored"
    );
    assert_eq!(h.pages_in_use(), 0);
    assert!(h.el2_mapped.lock().unwrap().is_empty());
    // An init handler that does not answer (the blob's vectors never took).
    let mut p = crate::fake::params();
    if let crate::El2Regime::Nvhe { el2_ttbr0, .. } = &mut p.regime {
        *el2_ttbr0 = EL2_TTBR0 + 1;
    }
    h.init_result.store(0, Ordering::SeqCst);
    let Err((h, e)) = Vmm::new(h, p) else {
        panic!()
    };
    assert_eq!(e, Errno::ENXIO);
    assert_eq!(h.pages_in_use(), 0);
    // A CPU whose PA range is too small to hold the guest platform.
    let mut p = crate::fake::params();
    p.id_regs.mmfr0 = 0;
    let Err((h, e)) = Vmm::new(h, p) else {
        panic!()
    };
    assert_eq!(e, Errno::ENXIO);
    // And the same host then loads fine.
    let v = Vmm::new(h, crate::fake::params()).ok().unwrap();
    assert!(v
        .host()
        .cpus
        .lock()
        .unwrap()
        .iter()
        .all(|c| matches!(c, CpuEl2::Up { .. })));
}

#[test]
fn request_shapes_are_checked() {
    let v = vmm();
    let mut short = vec![0u8; 10];
    assert_eq!(
        v.dispatch(DeviceRef::Ctl, ioctl::VMMCTL_VM_CREATE, &mut short),
        Err(Errno::EINVAL)
    );
    // Unknown request words, and requests on the wrong device.
    let mut b = vec![0u8; 8];
    assert_eq!(
        v.dispatch(DeviceRef::Ctl, ioctl::iowr::<u64>(b'V', 99), &mut b),
        Err(Errno::ENOTTY)
    );
    setup(&v, "vm", 2);
    assert_eq!(
        v.dispatch(DeviceRef::Vm(b"vm"), ioctl::iowr::<u64>(b'v', 200), &mut b),
        Err(Errno::ENOTTY)
    );
    let mut c = VmmctlVmCreate::new(b"x").unwrap();
    assert_eq!(
        vmio(&v, "vm", ioctl::VMMCTL_VM_CREATE, &mut c),
        Err(Errno::ENOTTY)
    );
    let mut r = VmRegister::default();
    assert_eq!(ctl(&v, ioctl::VM_GET_REGISTER, &mut r), Err(Errno::ENOTTY));
    // A VM that does not exist.
    assert_eq!(
        vmio(&v, "nope", ioctl::VM_GET_REGISTER, &mut r),
        Err(Errno::ENOENT)
    );
    // Same number, other length: the word differs, so it is unknown.
    let mut b = vec![0u8; 12];
    assert_eq!(
        v.dispatch(
            DeviceRef::Vm(b"vm"),
            ioctl::ioc(ioctl::IOC_INOUT, b'v', 21, 12),
            &mut b
        ),
        Err(Errno::ENOTTY)
    );
}

#[test]
fn create_and_destroy_validation() {
    let v = vmm();
    for bad in ["", "a/b", "..", "a\u{1}b"] {
        assert_eq!(create(&v, bad), Err(Errno::EINVAL), "{bad:?}");
    }
    let mut long = VmmctlVmCreate::new(b"").unwrap();
    long.name = [b'x'; 230]; // no NUL anywhere
    assert_eq!(
        ctl(&v, ioctl::VMMCTL_VM_CREATE, &mut long),
        Err(Errno::EINVAL)
    );
    let mut reserved = VmmctlVmCreate::new(b"r").unwrap();
    reserved.reserved[3] = 1;
    assert_eq!(
        ctl(&v, ioctl::VMMCTL_VM_CREATE, &mut reserved),
        Err(Errno::EINVAL)
    );
    let max = "m".repeat(229);
    create(&v, &max).unwrap();
    create(&v, "a").unwrap();
    assert_eq!(create(&v, "a"), Err(Errno::EEXIST));
    assert_eq!(destroy(&v, "b"), Err(Errno::ENOENT));
    destroy(&v, "a").unwrap();
    assert_eq!(destroy(&v, "a"), Err(Errno::ENOENT));
    destroy(&v, &max).unwrap();
    assert_eq!(v.vm_count(), 0);
}

#[test]
fn vm_list() {
    let v = vmm();
    for n in ["charlie", "alpha", "bravo"] {
        create(&v, n).unwrap();
    }
    let buf = v.host().user_alloc(64);
    let mut req = VmmctlVmList {
        buf,
        buflen: 14,
        ..Default::default()
    };
    ctl(&v, ioctl::VMMCTL_VM_LIST, &mut req).unwrap();
    assert_eq!((req.count, req.needed), (3, 6 + 6 + 8));
    assert_eq!(
        &v.host().user_read(buf, 14),
        b"alpha\0bravo\0\0\0",
        "whole names that fit"
    );
    req.buflen = 64;
    ctl(&v, ioctl::VMMCTL_VM_LIST, &mut req).unwrap();
    assert_eq!(&v.host().user_read(buf, 20), b"alpha\0bravo\0charlie\0");
    req.buf = 0xdead_0000;
    assert_eq!(ctl(&v, ioctl::VMMCTL_VM_LIST, &mut req), Err(Errno::EFAULT));
}

#[test]
fn thousand_vms_return_every_page() {
    let v = vmm();
    let base = v.host().pages_in_use();
    for i in 0..1000 {
        let n = format!("vm{i}");
        setup(&v, &n, 4);
        set_reg(&v, &n, 0, reg::VM_REG_GUEST_PC, RAM).unwrap();
        activate(&v, &n, 1).unwrap();
        destroy(&v, &n).unwrap();
    }
    assert_eq!(v.host().pages_in_use(), base);
    // At most 255 at once (8-bit VMIDs), and all of them go back too.
    for i in 0..255 {
        create(&v, &format!("c{i}")).unwrap();
    }
    assert_eq!(create(&v, "one-too-many"), Err(Errno::ENOSPC));
    for i in 0..255 {
        destroy(&v, &format!("c{i}")).unwrap();
    }
    assert_eq!(v.host().pages_in_use(), base);
    let tlbi_all = v
        .host()
        .tlbis
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.func == vmm_sys::hyp::HYP_S2_TLBI_ALL)
        .count();
    assert!(tlbi_all >= 1255, "every VMID invalidated before reuse");
}

#[test]
fn memory_segments() {
    let v = vmm();
    create(&v, "m").unwrap();
    assert_eq!(alloc_seg(&v, "m", -1, 4096), Err(Errno::EINVAL));
    assert_eq!(alloc_seg(&v, "m", 4, 4096), Err(Errno::EINVAL));
    assert_eq!(alloc_seg(&v, "m", 0, 0), Err(Errno::EINVAL));
    assert_eq!(alloc_seg(&v, "m", 0, 4097), Err(Errno::EINVAL));
    assert_eq!(alloc_seg(&v, "m", 0, 1 << 40), Err(Errno::EINVAL));
    assert_eq!(
        alloc_seg(&v, "m", 0, 1 << 38),
        Err(Errno::ENOMEM),
        "more than the host has"
    );
    alloc_seg(&v, "m", 0, 3 << 20).unwrap();
    assert_eq!(alloc_seg(&v, "m", 0, 3 << 20), Err(Errno::EEXIST));
    assert_eq!(alloc_seg(&v, "m", 0, 4 << 20), Err(Errno::EINVAL));
    let mut named = VmMemseg {
        segid: 1,
        len: 8192,
        ..Default::default()
    };
    named.name[..7].copy_from_slice(b"bootrom");
    vmio(&v, "m", ioctl::VM_ALLOC_MEMSEG, &mut named).unwrap();
    let mut nonul = VmMemseg {
        segid: 2,
        len: 8192,
        name: [b'z'; 16],
        ..Default::default()
    };
    assert_eq!(
        vmio(&v, "m", ioctl::VM_ALLOC_MEMSEG, &mut nonul),
        Err(Errno::EINVAL)
    );
    let mut g = VmMemseg {
        segid: 1,
        ..Default::default()
    };
    vmio(&v, "m", ioctl::VM_GET_MEMSEG, &mut g).unwrap();
    assert_eq!((g.len, &g.name[..8]), (8192, &b"bootrom\0"[..]));
    let mut g = VmMemseg {
        segid: 3,
        len: 5,
        ..Default::default()
    };
    vmio(&v, "m", ioctl::VM_GET_MEMSEG, &mut g).unwrap();
    assert_eq!(g.len, 0, "unallocated segment");
    g.segid = 9;
    assert_eq!(
        vmio(&v, "m", ioctl::VM_GET_MEMSEG, &mut g),
        Err(Errno::EINVAL)
    );
}

#[test]
fn memory_maps() {
    let v = vmm();
    create(&v, "m").unwrap();
    alloc_seg(&v, "m", 0, 8 << 20).unwrap();
    let rw = PROT_READ | PROT_WRITE;
    assert_eq!(mmap(&v, "m", RAM + 1, 0, 0, 4096, rw), Err(Errno::EINVAL));
    assert_eq!(mmap(&v, "m", RAM, 0, 2048, 4096, rw), Err(Errno::EINVAL));
    assert_eq!(mmap(&v, "m", RAM, 0, 0, 0, rw), Err(Errno::EINVAL));
    assert_eq!(mmap(&v, "m", RAM, 0, 0, 4095, rw), Err(Errno::EINVAL));
    assert_eq!(mmap(&v, "m", RAM, 0, 0, 4096, 0), Err(Errno::EINVAL));
    assert_eq!(mmap(&v, "m", RAM, 0, 0, 4096, 8), Err(Errno::EINVAL));
    assert_eq!(
        mmap(&v, "m", RAM, 1, 0, 4096, rw),
        Err(Errno::EINVAL),
        "no such segment"
    );
    assert_eq!(
        mmap(&v, "m", RAM, 0, 4 << 20, 8 << 20, rw),
        Err(Errno::EINVAL),
        "past the segment"
    );
    assert_eq!(mmap(&v, "m", RAM, 0, !0xfff, 8192, rw), Err(Errno::EINVAL));
    assert_eq!(
        mmap(&v, "m", (1 << 39) - 4096, 0, 0, 8192, rw),
        Err(Errno::EFAULT),
        "past the IPA space"
    );
    assert_eq!(mmap(&v, "m", !0xfff, 0, 0, 8192, rw), Err(Errno::EFAULT));
    let mut bad_flags = VmMemmap {
        gpa: RAM,
        segid: 0,
        len: 4096,
        prot: rw,
        flags: 2,
        ..Default::default()
    };
    assert_eq!(
        vmio(&v, "m", ioctl::VM_MMAP_MEMSEG, &mut bad_flags),
        Err(Errno::EINVAL)
    );
    mmap(&v, "m", RAM, 0, 0, 4 << 20, PROT_ALL).unwrap();
    assert_eq!(
        mmap(&v, "m", RAM + (4 << 20) - 4096, 0, 4 << 20, 8192, rw),
        Err(Errno::EFAULT),
        "overlap"
    );
    mmap(&v, "m", 0x1_0000_0000, 0, 4 << 20, 4 << 20, PROT_READ).unwrap();
    // The same segment bytes seen from both the map and the kernel's translation.
    let (pa, va, contig) = v.gpa_to_pa(b"m", RAM + 0x1234).unwrap();
    assert!(contig >= 4096);
    // SAFETY: test: the VA is inside the fake memory the VM's segment owns.
    unsafe { va.write(0x5a) };
    assert_eq!(v.host().pa_to_va(pa).unwrap().as_ptr(), va);
    assert!(v.gpa_to_pa(b"m", RAM + (4 << 20)).is_none());
    // The same byte through its segment, and segment memory that is not mapped.
    let (spa, sva, _) = v.segment_phys(b"m", 0, 0x1234).unwrap();
    assert_eq!((spa, sva), (pa, va));
    assert!(v.segment_phys(b"m", 0, (6 << 20) + 8).is_some());
    assert!(
        v.segment_phys(b"m", 0, 8 << 20).is_none(),
        "past the segment"
    );
    assert!(v.segment_phys(b"m", 1, 0).is_none(), "no such segment");
    assert!(v.segment_phys(b"m", -1, 0).is_none());
    assert!(v.gpa_to_pa(b"m", 0x1_0000_0000).is_some());
    // Fill all 8 slots, then one more.
    for i in 0..6u64 {
        mmap(&v, "m", 0x2_0000_0000 + i * 0x10_0000, 0, 0, 4096, rw).unwrap();
    }
    assert_eq!(
        mmap(&v, "m", 0x3_0000_0000, 0, 0, 4096, rw),
        Err(Errno::ENOSPC)
    );
    // GETNEXT walks them in address order.
    let mut seen = Vec::new();
    let mut q = VmMemmap::default();
    while vmio(&v, "m", ioctl::VM_MMAP_GETNEXT, &mut q).is_ok() {
        seen.push((q.gpa, q.segoff, q.len, q.prot));
        q.gpa += q.len;
    }
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[0], (RAM, 0, 4 << 20, PROT_ALL));
    assert_eq!(seen[1], (0x1_0000_0000, 4 << 20, 4 << 20, PROT_READ));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    // MUNMAP needs the exact mapping.
    let mut u = VmMunmap {
        gpa: RAM,
        len: 4096,
    };
    assert_eq!(
        vmio(&v, "m", ioctl::VM_MUNMAP_MEMSEG, &mut u),
        Err(Errno::EINVAL)
    );
    u.len = 4 << 20;
    vmio(&v, "m", ioctl::VM_MUNMAP_MEMSEG, &mut u).unwrap();
    assert!(v.gpa_to_pa(b"m", RAM).is_none());
    assert_eq!(
        vmio(&v, "m", ioctl::VM_MUNMAP_MEMSEG, &mut u),
        Err(Errno::EINVAL)
    );
    mmap(&v, "m", RAM, 0, 0, 4 << 20, PROT_ALL).unwrap();
    destroy(&v, "m").unwrap();
}

/// A distinct, valid value for each register (PSTATE needs a guest mode).
fn value_for(r: u32) -> u64 {
    if r == reg::VM_REG_GUEST_CPSR {
        0x2000_03c4
    } else {
        0x1000 + u64::from(r)
    }
}

#[test]
fn registers() {
    let v = vmm();
    setup(&v, "r", 2);
    for r in 0..reg::VM_REG_LAST {
        if r == reg::VM_REG_GUEST_TCR2_EL1 {
            continue;
        }
        set_reg(&v, "r", 3, r, value_for(r)).unwrap();
    }
    for r in 0..reg::VM_REG_LAST {
        let want = if r == reg::VM_REG_GUEST_TCR2_EL1 {
            0
        } else {
            value_for(r)
        };
        assert_eq!(get_reg(&v, "r", 3, r).unwrap(), want, "register {r}");
    }
    assert_eq!(
        set_reg(&v, "r", 3, reg::VM_REG_GUEST_TCR2_EL1, 1),
        Err(Errno::EINVAL)
    );
    // PSTATE: only EL0t, EL1t, EL1h; never EL2 (guest code at EL2) or AArch32.
    for bad in [0x3c9u64, 0x3c8, 0x3cd, 0x3c6, 0x3d0, 0x3d3, 0x1f] {
        assert_eq!(
            set_reg(&v, "r", 3, reg::VM_REG_GUEST_CPSR, bad),
            Err(Errno::EINVAL),
            "{bad:#x}"
        );
    }
    for good in [0x3c5u64, 0x3c4, 0x0, 0x6000_03c5] {
        set_reg(&v, "r", 3, reg::VM_REG_GUEST_CPSR, good).unwrap();
        assert_eq!(get_reg(&v, "r", 3, reg::VM_REG_GUEST_CPSR).unwrap(), good);
    }
    // Register 40 is XZR: reads zero, writes vanish.
    set_reg(&v, "r", 3, reg::VM_REG_LAST, 77).unwrap();
    assert_eq!(get_reg(&v, "r", 3, reg::VM_REG_LAST).unwrap(), 0);
    assert_eq!(get_reg(&v, "r", 3, 41), Err(Errno::EINVAL));
    assert_eq!(get_reg(&v, "r", -1, 0), Err(Errno::EINVAL));
    assert_eq!(get_reg(&v, "r", 16, 0), Err(Errno::EINVAL));
    // A fresh vCPU reads its reset state.
    assert_eq!(get_reg(&v, "r", 5, reg::VM_REG_GUEST_CPSR).unwrap(), 0x3c5);
    assert_eq!(
        get_reg(&v, "r", 5, reg::VM_REG_GUEST_MPIDR_EL1).unwrap(),
        0x8000_0005
    );
    assert_eq!(
        get_reg(&v, "r", 5, reg::VM_REG_GUEST_SCTLR_EL1).unwrap() & 1,
        0
    );
}

#[test]
fn register_sets() {
    let v = vmm();
    setup(&v, "s", 2);
    let h = v.host();
    let nums = h.user_alloc(4 * 41);
    let vals = h.user_alloc(8 * 41);
    let list: Vec<i32> = vec![0, 5, 30, 31, 32, 33];
    h.user_write(
        nums,
        &list
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    h.user_write(
        vals,
        &[0x111u64, 0x222, 0x333, 0x444, 0x555, 0x3c5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let mut req = VmRegisterSet {
        cpuid: 0,
        count: 6,
        regnums: nums,
        regvals: vals,
    };
    vmio(&v, "s", ioctl::VM_SET_REGISTER_SET, &mut req).unwrap();
    assert_eq!(get_reg(&v, "s", 0, 31).unwrap(), 4 * 0x111, "sp");
    assert_eq!(get_reg(&v, "s", 0, 33).unwrap(), 0x3c5, "cpsr");
    let out = h.user_alloc(8 * 6);
    let mut g = VmRegisterSet {
        cpuid: 0,
        count: 6,
        regnums: nums,
        regvals: out,
    };
    vmio(&v, "s", ioctl::VM_GET_REGISTER_SET, &mut g).unwrap();
    assert_eq!(h.user_read(out, 48), h.user_read(vals, 48));
    // Too many, unreadable or unwritable user memory, a bad number (nothing changes).
    g.count = 41;
    assert_eq!(
        vmio(&v, "s", ioctl::VM_GET_REGISTER_SET, &mut g),
        Err(Errno::EINVAL)
    );
    g.count = 6;
    g.regvals = 0x10;
    assert_eq!(
        vmio(&v, "s", ioctl::VM_GET_REGISTER_SET, &mut g),
        Err(Errno::EFAULT)
    );
    req.regnums = 0x10;
    assert_eq!(
        vmio(&v, "s", ioctl::VM_SET_REGISTER_SET, &mut req),
        Err(Errno::EFAULT)
    );
    // A PSTATE naming EL2 in the set: refused before anything is written.
    let evil = h.user_alloc(8 * 6);
    h.user_write(
        evil,
        &[7u64, 7, 7, 7, 7, 0x3c9]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let mut e = VmRegisterSet {
        cpuid: 0,
        count: 6,
        regnums: nums,
        regvals: evil,
    };
    assert_eq!(
        vmio(&v, "s", ioctl::VM_SET_REGISTER_SET, &mut e),
        Err(Errno::EINVAL)
    );
    assert_eq!(get_reg(&v, "s", 0, 0).unwrap(), 0x111);
    h.user_write(nums, &[0, 0, 0, 0, 99, 0, 0, 0]);
    req.regnums = nums;
    req.count = 2;
    assert_eq!(
        vmio(&v, "s", ioctl::VM_SET_REGISTER_SET, &mut req),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        get_reg(&v, "s", 0, 0).unwrap(),
        0x111,
        "x0 unchanged by a rejected set"
    );
}

#[test]
fn cpus_topology_caps_stats() {
    let v = vmm();
    setup(&v, "c", 2);
    assert_eq!(activate(&v, "c", 0), Err(Errno::EBUSY));
    assert_eq!(activate(&v, "c", 16), Err(Errno::EINVAL));
    activate(&v, "c", 3).unwrap();
    let buf = v.host().user_alloc(128);
    let mut s = VmCpuset {
        which: VM_ACTIVE_CPUS,
        cpusetsize: 128,
        cpus: buf,
    };
    vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s).unwrap();
    assert_eq!(v.host().user_read(buf, 3), vec![0b1001, 0, 0]);
    for bad in [0, 129, -1] {
        s.cpusetsize = bad;
        assert_eq!(
            vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s),
            Err(Errno::ERANGE)
        );
    }
    s.cpusetsize = 8;
    s.which = 3;
    assert_eq!(
        vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s),
        Err(Errno::EINVAL)
    );
    s.which = VM_ACTIVE_CPUS;
    s.cpus = 0x20;
    assert_eq!(
        vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s),
        Err(Errno::EFAULT)
    );
    // Debug hold / release.
    let mut a = VmActivateCpu { vcpuid: 2 };
    assert_eq!(
        vmio(&v, "c", ioctl::VM_SUSPEND_CPU, &mut a),
        Err(Errno::EINVAL),
        "inactive"
    );
    a.vcpuid = 3;
    vmio(&v, "c", ioctl::VM_SUSPEND_CPU, &mut a).unwrap();
    s = VmCpuset {
        which: VM_DEBUG_CPUS,
        cpusetsize: 1,
        cpus: buf,
    };
    vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s).unwrap();
    assert_eq!(v.host().user_read(buf, 1), vec![0b1000]);
    vmio(&v, "c", ioctl::VM_RESUME_CPU, &mut a).unwrap();
    assert_eq!(
        vmio(&v, "c", ioctl::VM_RESUME_CPU, &mut a),
        Err(Errno::EINVAL)
    );
    a.vcpuid = -1;
    vmio(&v, "c", ioctl::VM_SUSPEND_CPU, &mut a).unwrap();
    vmio(&v, "c", ioctl::VM_GET_CPUS, &mut s).unwrap();
    assert_eq!(v.host().user_read(buf, 1), vec![0b1001]);
    vmio(&v, "c", ioctl::VM_RESUME_CPU, &mut a).unwrap();
    // Topology.
    let mut t = VmCpuTopology::default();
    vmio(&v, "c", ioctl::VM_GET_TOPOLOGY, &mut t).unwrap();
    assert_eq!((t.sockets, t.cores, t.threads, t.maxcpus), (1, 1, 1, 16));
    t = VmCpuTopology {
        sockets: 2,
        cores: 4,
        threads: 2,
        maxcpus: 0,
    };
    vmio(&v, "c", ioctl::VM_SET_TOPOLOGY, &mut t).unwrap();
    t = VmCpuTopology {
        sockets: 3,
        cores: 3,
        threads: 2,
        maxcpus: 0,
    };
    assert_eq!(
        vmio(&v, "c", ioctl::VM_SET_TOPOLOGY, &mut t),
        Err(Errno::EINVAL)
    );
    t = VmCpuTopology {
        sockets: 0,
        cores: 3,
        threads: 2,
        maxcpus: 0,
    };
    assert_eq!(
        vmio(&v, "c", ioctl::VM_SET_TOPOLOGY, &mut t),
        Err(Errno::EINVAL)
    );
    t = VmCpuTopology {
        sockets: 0xffff,
        cores: 0xffff,
        threads: 0xffff,
        maxcpus: 0,
    };
    assert_eq!(
        vmio(&v, "c", ioctl::VM_SET_TOPOLOGY, &mut t),
        Err(Errno::EINVAL)
    );
    vmio(&v, "c", ioctl::VM_GET_TOPOLOGY, &mut t).unwrap();
    assert_eq!((t.sockets, t.cores, t.threads), (2, 4, 2));
    // Capabilities.
    let mut c = VmCapability {
        cpuid: 0,
        captype: cap::HALT_EXIT,
        capval: 1,
        allcpus: 0,
    };
    vmio(&v, "c", ioctl::VM_SET_CAPABILITY, &mut c).unwrap();
    c.capval = 0;
    vmio(&v, "c", ioctl::VM_GET_CAPABILITY, &mut c).unwrap();
    assert_eq!(c.capval, 1);
    c.captype = cap::PAUSE_EXIT;
    assert_eq!(
        vmio(&v, "c", ioctl::VM_GET_CAPABILITY, &mut c),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        vmio(&v, "c", ioctl::VM_SET_CAPABILITY, &mut c),
        Err(Errno::ENOENT)
    );
    c.captype = cap::MAX;
    assert_eq!(
        vmio(&v, "c", ioctl::VM_GET_CAPABILITY, &mut c),
        Err(Errno::EINVAL)
    );
    c = VmCapability {
        cpuid: 0,
        captype: cap::BRK_EXIT,
        capval: 1,
        allcpus: 1,
    };
    vmio(&v, "c", ioctl::VM_SET_CAPABILITY, &mut c).unwrap();
    c.cpuid = 9;
    c.capval = 0;
    vmio(&v, "c", ioctl::VM_GET_CAPABILITY, &mut c).unwrap();
    assert_eq!(c.capval, 1, "allcpus reached vCPU 9");
    // Stats and their descriptions.
    let mut st = VmStats {
        cpuid: 0,
        index: 0,
        ..Default::default()
    };
    vmio(&v, "c", ioctl::VM_STATS, &mut st).unwrap();
    assert_eq!(st.num_entries as usize, crate::stats::NSTATS);
    assert!(st.tv.tv_sec >= 0 && (0..1_000_000).contains(&st.tv.tv_usec));
    st.index = 10;
    vmio(&v, "c", ioctl::VM_STATS, &mut st).unwrap();
    assert_eq!(st.num_entries as usize, crate::stats::NSTATS - 10);
    st.index = -1;
    assert_eq!(vmio(&v, "c", ioctl::VM_STATS, &mut st), Err(Errno::EINVAL));
    let mut d = VmStatDesc {
        index: 0,
        ..Default::default()
    };
    vmio(&v, "c", ioctl::VM_STAT_DESC, &mut d).unwrap();
    assert!(d.desc.starts_with(b"total number of vm exits\0"));
    d.index = crate::stats::NSTATS as i32;
    assert_eq!(
        vmio(&v, "c", ioctl::VM_STAT_DESC, &mut d),
        Err(Errno::EINVAL)
    );
}

/// Guest memory over all VMs is limited: a segment past the limit is refused with
/// ENOMEM before any page is allocated, destroying a VM gives its memory back to the
/// limit, and the limit can change at run time.
#[test]
fn guest_memory_is_limited_before_anything_is_allocated() {
    let mut params = crate::fake::params();
    params.max_guest_mem = 8 << 20;
    let v = Vmm::new(FakeHost::new(64, 2), params).ok().unwrap();
    create(&v, "a").unwrap();
    create(&v, "b").unwrap();
    alloc_seg(&v, "a", 0, 6 << 20).unwrap();
    assert_eq!(v.guest_mem(), (6 << 20, 8 << 20));
    let pages = v.host().pages_in_use();
    assert_eq!(alloc_seg(&v, "b", 0, 4 << 20), Err(Errno::ENOMEM));
    assert_eq!(
        v.host().pages_in_use(),
        pages,
        "nothing allocated for the refusal"
    );
    assert_eq!(v.guest_mem().0, 6 << 20);
    alloc_seg(&v, "b", 0, 2 << 20).unwrap();
    // A failed allocation (the segment exists already) gives its reservation back.
    assert_eq!(alloc_seg(&v, "b", 0, 2 << 20), Err(Errno::EEXIST));
    assert_eq!(v.guest_mem().0, 8 << 20);
    destroy(&v, "a").unwrap();
    assert_eq!(v.guest_mem().0, 2 << 20, "a's memory back under the limit");
    v.set_max_guest_mem(4 << 20);
    assert_eq!(alloc_seg(&v, "b", 1, 4 << 20), Err(Errno::ENOMEM));
    alloc_seg(&v, "b", 1, 2 << 20).unwrap();
    destroy(&v, "b").unwrap();
    assert_eq!(v.guest_mem(), (0, 4 << 20));
    v.shutdown().unwrap();
}

/// A large segment's allocation gives up between chunks when the caller is interrupted
/// (a signal; the testbed's client gone): EINTR, every page it took back, the limit's
/// reservation released, and the VM usable for a new try.
#[test]
fn an_interrupted_allocation_gives_everything_back() {
    let v = vmm();
    create(&v, "big").unwrap();
    let pages = v.host().pages_in_use();
    v.host().interrupt_alloc_after.store(3, Ordering::SeqCst);
    assert_eq!(alloc_seg(&v, "big", 0, 16 << 20), Err(Errno::EINTR));
    assert_eq!(v.host().pages_in_use(), pages, "the chunks taken are freed");
    assert_eq!(v.guest_mem().0, 0, "nothing counted against the limit");
    v.host().interrupt_alloc_after.store(0, Ordering::SeqCst);
    alloc_seg(&v, "big", 0, 16 << 20).unwrap();
    destroy(&v, "big").unwrap();
}
