//! Instantiates [`freebsd_declare_module!`](crate::freebsd_declare_module) in the test
//! binary and reads the two linker sets back through the `__start_set_*` /
//! `__stop_set_*` symbols the static linker defines, as FreeBSD's kernel linker does
//! when it loads a module (`linker_file_lookup_set`).

// Test code: a panic here is a failed test, so the kernel-crate lints against
// panicking constructs do not apply.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use crate::module::*;
use core::ffi::{c_char, c_int, c_void, CStr};

static EVENTS: std::sync::Mutex<Vec<c_int>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn test_handler(_m: *mut Module, what: c_int, _arg: *mut c_void) -> c_int {
    EVENTS.lock().map(|mut e| e.push(what)).ok();
    0
}

unsafe extern "C" fn test_register(_data: *const c_void) {}

crate::freebsd_declare_module! {
    name: c"vmmtest", handler: test_handler, version: 7,
    kernel: (FREEBSD_VERSION_15_0, FREEBSD_VERSION_15_0, KERNEL_MAXVER_15),
    subsystem: SI_SUB_SMP + 1, order: SI_ORDER_ANY, register: test_register,
}

extern "C" {
    static __start_set_modmetadata_set: [*const ModMetadata; 0];
    static __stop_set_modmetadata_set: [*const ModMetadata; 0];
    static __start_set_sysinit_set: [*const Sysinit; 0];
    static __stop_set_sysinit_set: [*const Sysinit; 0];
}

fn set<T>(start: *const [*const T; 0], stop: *const [*const T; 0]) -> Vec<*const T> {
    let (a, b) = (start as usize, stop as usize);
    assert!(b >= a && (b - a) % 8 == 0, "set bounds {a:#x}..{b:#x}");
    let n = (b - a) / 8;
    // SAFETY: the linker placed exactly the set's pointer-sized entries between the
    // bounds; they are statics of this binary.
    (0..n)
        .map(|i| unsafe { *(start as *const *const T).add(i) })
        .collect()
}

fn cstr(p: *const c_char) -> String {
    // SAFETY: the macro only stores NUL-terminated literals.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn modmetadata_set_holds_depend_module_and_version() {
    let md = set(
        &raw const __start_set_modmetadata_set,
        &raw const __stop_set_modmetadata_set,
    );
    let mut kinds = Vec::new();
    for p in md {
        // SAFETY: every entry points at one of the macro's ModMetadata statics.
        let m = unsafe { &*p };
        assert_eq!(m.md_version, MDT_STRUCT_VERSION);
        kinds.push((m.md_type, cstr(m.md_cval)));
        match m.md_type {
            MDT_DEPEND => {
                // SAFETY: MDT_DEPEND records point at a ModDepend.
                let d = unsafe { &*(m.md_data as *const ModDepend) };
                assert_eq!(
                    (d.md_ver_minimum, d.md_ver_preferred, d.md_ver_maximum),
                    (1_500_068, 1_500_068, 1_599_999)
                );
            }
            MDT_MODULE => {
                // SAFETY: MDT_MODULE records point at the ModuleData.
                let d = unsafe { &*(m.md_data as *const ModuleData) };
                assert_eq!(cstr(d.name), "vmmtest");
                let h = d.evhand.expect("handler");
                // SAFETY: the test handler ignores its pointers.
                let r = unsafe { h(core::ptr::null_mut(), MOD_LOAD, core::ptr::null_mut()) };
                assert_eq!(r, 0);
                assert!(EVENTS
                    .lock()
                    .map(|e| e.contains(&MOD_LOAD))
                    .unwrap_or(false));
            }
            MDT_VERSION => {
                // SAFETY: MDT_VERSION records point at a ModVersion.
                let v = unsafe { &*(m.md_data as *const ModVersion) };
                assert_eq!(v.mv_version, 7);
            }
            t => panic!("unexpected metadata type {t}"),
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            (MDT_DEPEND, "kernel".to_string()),
            (MDT_MODULE, "vmmtest".to_string()),
            (MDT_VERSION, "vmmtest".to_string()),
        ]
    );
}

#[test]
fn sysinit_set_registers_the_module_data() {
    let si = set(
        &raw const __start_set_sysinit_set,
        &raw const __stop_set_sysinit_set,
    );
    assert_eq!(si.len(), 1);
    // SAFETY: the entry points at the macro's SysinitCell.
    let s = unsafe { &*si[0] };
    assert_eq!(s.subsystem, SI_SUB_SMP + 1);
    assert_eq!(s.order, SI_ORDER_ANY);
    assert!(s.next.is_null());
    assert_eq!(
        s.udata,
        core::ptr::addr_of!(__freebsd_module::MODULE_DATA).cast()
    );
    assert_eq!(
        s.func.map(|f| f as *const () as usize),
        Some(test_register as *const () as usize)
    );
}
