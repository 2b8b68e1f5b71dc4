//! The `struct pcpu` offsets the glue reads, against a mirror of the header's first
//! members (sys/sys/pcpu.h, FreeBSD 15.0, and the trees with `pc_sched`).

use crate::smp::{PC_CPUID_OFFSETS, PC_CURTHREAD_OFFSET};
use crate::vfp::{PC_CURPCB_OFFSET, PC_FPCURTHREAD_OFFSET};
use core::ffi::c_void;
use core::mem::offset_of;

#[repr(C)]
struct Pcpu15 {
    pc_curthread: *mut c_void,
    pc_idlethread: *mut c_void,
    pc_fpcurthread: *mut c_void,
    pc_deadthread: *mut c_void,
    pc_curpcb: *mut c_void,
    pc_switchtime: u64,
    pc_switchticks: i32,
    pc_cpuid: u32,
}

#[repr(C)]
struct PcpuWithSched {
    pc_curthread: *mut c_void,
    pc_idlethread: *mut c_void,
    pc_fpcurthread: *mut c_void,
    pc_deadthread: *mut c_void,
    pc_curpcb: *mut c_void,
    pc_sched: *mut c_void,
    pc_switchtime: u64,
    pc_switchticks: i32,
    pc_cpuid: u32,
}

#[test]
fn pcpu_offsets_match_both_layouts() {
    assert_eq!(offset_of!(Pcpu15, pc_curthread), PC_CURTHREAD_OFFSET);
    assert_eq!(offset_of!(Pcpu15, pc_fpcurthread), PC_FPCURTHREAD_OFFSET);
    assert_eq!(offset_of!(Pcpu15, pc_curpcb), PC_CURPCB_OFFSET);
    assert_eq!(offset_of!(Pcpu15, pc_cpuid), PC_CPUID_OFFSETS[0]);
    assert_eq!(
        offset_of!(PcpuWithSched, pc_fpcurthread),
        PC_FPCURTHREAD_OFFSET
    );
    assert_eq!(offset_of!(PcpuWithSched, pc_curpcb), PC_CURPCB_OFFSET);
    assert_eq!(offset_of!(PcpuWithSched, pc_cpuid), PC_CPUID_OFFSETS[1]);
}
