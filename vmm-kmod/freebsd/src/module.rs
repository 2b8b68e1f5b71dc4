//! Module registration: what `DECLARE_MODULE`, `MODULE_VERSION` and `MODULE_DEPEND`
//! emit (FreeBSD 15.0 `sys/sys/module.h`, `sys/sys/kernel.h`, `sys/sys/linker_set.h`).
//!
//! A FreeBSD kld announces itself with two linker sets:
//! * `set_modmetadata_set`: pointers to `struct mod_metadata` records. kldload reads
//!   them before running any code: `MDT_DEPEND` "kernel" (the `__FreeBSD_version`
//!   range the module accepts), `MDT_MODULE` (the `moduledata` naming the module and
//!   its event handler) and `MDT_VERSION` (the module's own version, for dependents).
//! * `set_sysinit_set`: pointers to `struct sysinit`; the one DECLARE_MODULE adds calls
//!   `module_register_init(&moduledata)`, which sends `MOD_LOAD` to the handler.
//!
//! The kernel linker finds a set through the symbols `__start_set_<name>` and
//! `__stop_set_<name>` of the loaded object (link_elf.c `link_elf_lookup_set`), which
//! the static linker defines for any section whose name is a C identifier. The kernel
//! *writes* `sysinit.next` (it strings the records on a STAILQ), so the sysinit record
//! must live in writable memory: [`SysinitCell`] has interior mutability for that.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};

/// `__FreeBSD_version` of FreeBSD 15.0-RELEASE (`sys/sys/param.h` on releng/15.0).
pub const FREEBSD_VERSION_15_0: c_int = 1_500_068;
/// `MODULE_KERNEL_MAXVER` for a 15.x build: `roundup(__FreeBSD_version, 100000) - 1`,
/// i.e. the module loads on any 15.y kernel at or after the one it was built for.
pub const KERNEL_MAXVER_15: c_int = 1_599_999;

/// `MDT_DEPEND`: argument is a `struct mod_depend`, label the module depended on.
pub const MDT_DEPEND: c_int = 1;
/// `MDT_MODULE`: argument is the `moduledata_t`, label the module name.
pub const MDT_MODULE: c_int = 2;
/// `MDT_VERSION`: argument is a `struct mod_version`, label the module name.
pub const MDT_VERSION: c_int = 3;
/// `MDT_PNP_INFO`: plug-and-play hints (not used by vmm).
pub const MDT_PNP_INFO: c_int = 4;
/// `MDT_STRUCT_VERSION`: the `md_version` of every record.
pub const MDT_STRUCT_VERSION: c_int = 1;

/// `enum modeventtype` (`sys/sys/module.h`): the `what` argument of the handler.
pub const MOD_LOAD: c_int = 0;
pub const MOD_UNLOAD: c_int = 1;
pub const MOD_SHUTDOWN: c_int = 2;
pub const MOD_QUIESCE: c_int = 3;

/// `SI_SUB_SMP` (`sys/sys/kernel.h`): the APs are started. vmm registers at
/// `SI_SUB_SMP + 1` because EL2 setup needs `smp_rendezvous` (arm64 vmm.c).
pub const SI_SUB_SMP: u32 = 0x0f00_0000;
/// `SI_SUB_DRIVERS` (`DEV_MODULE`'s subsystem), for reference.
pub const SI_SUB_DRIVERS: u32 = 0x0310_0000;
/// `SI_ORDER_FIRST` / `SI_ORDER_MIDDLE` / `SI_ORDER_ANY` (`enum sysinit_elem_order`).
pub const SI_ORDER_FIRST: u32 = 0x0000_0000;
pub const SI_ORDER_MIDDLE: u32 = 0x0100_0000;
pub const SI_ORDER_ANY: u32 = 0x0fff_ffff;

/// Opaque `struct module` (`module_t` is a pointer to it).
#[repr(C)]
pub struct Module {
    _private: [u8; 0],
}

/// `modeventhand_t` (`sys/sys/module.h`):
/// `int (*)(module_t, int /* modeventtype_t */, void *)`.
///
/// Called with Giant held (kern_module.c). A failed `MOD_LOAD` is followed at once by a
/// `MOD_UNLOAD`; `MOD_QUIESCE` answered with `EOPNOTSUPP`/`EINVAL` counts as success.
pub type ModEventHandler = unsafe extern "C" fn(*mut Module, c_int, *mut c_void) -> c_int;

/// `struct moduledata` / `moduledata_t` (`sys/sys/module.h`, FreeBSD 15.0).
#[repr(C)]
pub struct ModuleData {
    /// `const char *name`: NUL-terminated module name.
    pub name: *const c_char,
    /// `modeventhand_t evhand`.
    pub evhand: Option<ModEventHandler>,
    /// `void *priv`: passed back as the handler's third argument.
    pub priv_: *mut c_void,
}

/// `struct mod_depend` (`sys/sys/module.h`).
#[repr(C)]
pub struct ModDepend {
    pub md_ver_minimum: c_int,
    pub md_ver_preferred: c_int,
    pub md_ver_maximum: c_int,
}

/// `struct mod_version` (`sys/sys/module.h`).
#[repr(C)]
pub struct ModVersion {
    pub mv_version: c_int,
}

/// `struct mod_metadata` (`sys/sys/module.h`).
#[repr(C)]
pub struct ModMetadata {
    /// `MDT_STRUCT_VERSION`.
    pub md_version: c_int,
    /// `MDT_*`.
    pub md_type: c_int,
    /// `const void *md_data`: the record the type names.
    pub md_data: *const c_void,
    /// `const char *md_cval`: the common string label (module name).
    pub md_cval: *const c_char,
}

/// `sysinit_cfunc_t` (`sys/sys/kernel.h`): `void (*)(const void *)`.
pub type SysinitFunc = unsafe extern "C" fn(*const c_void);

/// `struct sysinit` (`sys/sys/kernel.h`, FreeBSD 14 and later: the `next` STAILQ link
/// was added when init_main.c moved to a merge-sorted STAILQ of sysinits).
#[repr(C)]
pub struct Sysinit {
    /// `enum sysinit_sub_id subsystem`.
    pub subsystem: u32,
    /// `enum sysinit_elem_order order`.
    pub order: u32,
    /// `STAILQ_ENTRY(sysinit) next`: one pointer, written by the kernel.
    pub next: *mut Sysinit,
    /// `sysinit_cfunc_t func`.
    pub func: Option<SysinitFunc>,
    /// `const void *udata`.
    pub udata: *const c_void,
}

/// A [`Sysinit`] in writable memory (the kernel links it into its list), shareable as a
/// `static`.
#[repr(transparent)]
pub struct SysinitCell(pub UnsafeCell<Sysinit>);

impl SysinitCell {
    pub const fn new(s: Sysinit) -> Self {
        SysinitCell(UnsafeCell::new(s))
    }
}

// SAFETY: only the kernel's module loader touches the record, under its own lock
// (kld_sx), and Rust code never reads or writes it after the static is built.
unsafe impl Sync for SysinitCell {}
// SAFETY: the records are immutable after construction and only point at other statics.
unsafe impl Sync for ModuleData {}
// SAFETY: as above.
unsafe impl Sync for ModMetadata {}

/// One element of a linker set: a pointer to the record, placed by the caller in the
/// set's section with `#[link_section = "set_<name>"]` (what `DATA_SET`/`DATA_WSET`'s
/// `__MAKE_SET_QV` does in `sys/sys/linker_set.h`).
#[repr(transparent)]
pub struct SetEntry(pub *const c_void);

// SAFETY: the pointer names a static that lives as long as the module.
unsafe impl Sync for SetEntry {}

/// `MODULE_KERNEL_MAXVER` for a given `__FreeBSD_version`:
/// `roundup(v, 100000) - 1` (`sys/sys/module.h`). `None` for a non-positive version.
pub const fn kernel_maxver(version: c_int) -> Option<c_int> {
    if version <= 0 {
        return None;
    }
    let Some(up) = version.checked_add(99_999) else {
        return None;
    };
    let Some(rounded) = (match up.checked_div(100_000) {
        Some(q) => q.checked_mul(100_000),
        None => None,
    }) else {
        return None;
    };
    rounded.checked_sub(1)
}

extern "C" {
    /// `void module_register_init(const void *)` (`sys/sys/module.h`,
    /// sys/kern/kern_module.c): the SYSINIT function DECLARE_MODULE registers. It looks
    /// the module up by name and delivers `MOD_LOAD`.
    pub fn module_register_init(data: *const c_void);
}

/// Emits, in the calling crate, exactly what FreeBSD's
/// `DECLARE_MODULE(name, data, sub, order)` plus `MODULE_VERSION(name, version)` emit:
/// the `moduledata`, a `mod_depend` on "kernel" for `[min, max]`, the three
/// `mod_metadata` records with their `set_modmetadata_set` entries, and the `sysinit`
/// calling `register` (normally [`module_register_init`]) with its `set_sysinit_set`
/// entry. Use it once per module, at item level:
///
/// ```ignore
/// vmm_kmod::freebsd_declare_module! {
///     name: c"vmm", handler: vmm_modevent, version: 1,
///     kernel: (FREEBSD_VERSION_15_0, FREEBSD_VERSION_15_0, KERNEL_MAXVER_15),
///     subsystem: SI_SUB_SMP + 1, order: SI_ORDER_ANY,
///     register: vmm_kmod::freebsd::module::module_register_init,
/// }
/// ```
///
/// The items live in a private module `__freebsd_module` so their names cannot clash.
#[macro_export]
macro_rules! freebsd_declare_module {
    (
        name: $name:expr, handler: $handler:path, version: $version:expr,
        kernel: ($kmin:expr, $kpref:expr, $kmax:expr),
        subsystem: $sub:expr, order: $order:expr, register: $register:path $(,)?
    ) => {
        #[allow(non_upper_case_globals, dead_code)]
        mod __freebsd_module {
            use super::*;
            use core::ffi::c_void;
            use $crate::module as m;

            const NAME: &core::ffi::CStr = $name;

            pub static MODULE_DATA: m::ModuleData = m::ModuleData {
                name: NAME.as_ptr(),
                evhand: Some($handler),
                priv_: core::ptr::null_mut(),
            };
            static DEPEND_KERNEL: m::ModDepend = m::ModDepend {
                md_ver_minimum: $kmin,
                md_ver_preferred: $kpref,
                md_ver_maximum: $kmax,
            };
            static VERSION: m::ModVersion = m::ModVersion {
                mv_version: $version,
            };

            pub static MD_DEPEND_KERNEL: m::ModMetadata = m::ModMetadata {
                md_version: m::MDT_STRUCT_VERSION,
                md_type: m::MDT_DEPEND,
                md_data: core::ptr::addr_of!(DEPEND_KERNEL).cast(),
                md_cval: c"kernel".as_ptr(),
            };
            pub static MD_MODULE: m::ModMetadata = m::ModMetadata {
                md_version: m::MDT_STRUCT_VERSION,
                md_type: m::MDT_MODULE,
                md_data: core::ptr::addr_of!(MODULE_DATA).cast(),
                md_cval: NAME.as_ptr(),
            };
            pub static MD_VERSION: m::ModMetadata = m::ModMetadata {
                md_version: m::MDT_STRUCT_VERSION,
                md_type: m::MDT_VERSION,
                md_data: core::ptr::addr_of!(VERSION).cast(),
                md_cval: NAME.as_ptr(),
            };

            #[used]
            #[link_section = "set_modmetadata_set"]
            static SET_MD_DEPEND_KERNEL: m::SetEntry =
                m::SetEntry(core::ptr::addr_of!(MD_DEPEND_KERNEL).cast::<c_void>());
            #[used]
            #[link_section = "set_modmetadata_set"]
            static SET_MD_MODULE: m::SetEntry =
                m::SetEntry(core::ptr::addr_of!(MD_MODULE).cast::<c_void>());
            #[used]
            #[link_section = "set_modmetadata_set"]
            static SET_MD_VERSION: m::SetEntry =
                m::SetEntry(core::ptr::addr_of!(MD_VERSION).cast::<c_void>());

            pub static SYSINIT: m::SysinitCell = m::SysinitCell::new(m::Sysinit {
                subsystem: $sub,
                order: $order,
                next: core::ptr::null_mut(),
                func: Some($register),
                udata: core::ptr::addr_of!(MODULE_DATA).cast::<c_void>(),
            });
            #[used]
            #[link_section = "set_sysinit_set"]
            static SET_SYSINIT: m::SetEntry =
                m::SetEntry(core::ptr::addr_of!(SYSINIT).cast::<c_void>());

            // The kernel finds each set through the symbols `__start_set_<name>` and
            // `__stop_set_<name>` (link_elf_lookup_set). The static linker defines them
            // only when something refers to them: FreeBSD's `__MAKE_SET_QV` adds weak
            // references for that; these strong ones do the same job.
            extern "C" {
                static __start_set_modmetadata_set: u8;
                static __stop_set_modmetadata_set: u8;
                static __start_set_sysinit_set: u8;
                static __stop_set_sysinit_set: u8;
            }
            #[used]
            static SET_BOUNDS: [m::SetEntry; 4] = [
                m::SetEntry(core::ptr::addr_of!(__start_set_modmetadata_set).cast::<c_void>()),
                m::SetEntry(core::ptr::addr_of!(__stop_set_modmetadata_set).cast::<c_void>()),
                m::SetEntry(core::ptr::addr_of!(__start_set_sysinit_set).cast::<c_void>()),
                m::SetEntry(core::ptr::addr_of!(__stop_set_sysinit_set).cast::<c_void>()),
            ];
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_freebsd_lp64() {
        assert_eq!(size_of::<ModuleData>(), 24);
        assert_eq!(offset_of!(ModuleData, evhand), 8);
        assert_eq!(offset_of!(ModuleData, priv_), 16);
        assert_eq!(size_of::<ModDepend>(), 12);
        assert_eq!(size_of::<ModVersion>(), 4);
        assert_eq!(size_of::<ModMetadata>(), 24);
        assert_eq!(offset_of!(ModMetadata, md_type), 4);
        assert_eq!(offset_of!(ModMetadata, md_data), 8);
        assert_eq!(offset_of!(ModMetadata, md_cval), 16);
        assert_eq!(size_of::<Sysinit>(), 32);
        assert_eq!(offset_of!(Sysinit, order), 4);
        assert_eq!(offset_of!(Sysinit, next), 8);
        assert_eq!(offset_of!(Sysinit, func), 16);
        assert_eq!(offset_of!(Sysinit, udata), 24);
        assert_eq!(size_of::<SysinitCell>(), 32);
        assert_eq!(size_of::<SetEntry>(), 8);
        assert_eq!(align_of::<SetEntry>(), 8);
        assert_eq!(size_of::<Option<ModEventHandler>>(), 8);
    }

    #[test]
    fn kernel_maxver_rounds_to_the_end_of_the_branch() {
        assert_eq!(kernel_maxver(FREEBSD_VERSION_15_0), Some(KERNEL_MAXVER_15));
        assert_eq!(kernel_maxver(1_500_000), Some(1_499_999));
        assert_eq!(kernel_maxver(1_500_001), Some(1_599_999));
        assert_eq!(kernel_maxver(1_400_097), Some(1_499_999));
        assert_eq!(kernel_maxver(0), None);
        assert_eq!(kernel_maxver(c_int::MAX), None);
    }

    #[test]
    fn event_types_are_the_enum_order() {
        assert_eq!(
            [MOD_LOAD, MOD_UNLOAD, MOD_SHUTDOWN, MOD_QUIESCE],
            [0, 1, 2, 3]
        );
    }
}
