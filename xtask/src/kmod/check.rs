//! The structural checks of a built vmm.ko against what FreeBSD's kernel linker
//! (link_elf.c, arm64 elf_machdep.c) accepts, on the module's bytes
//! (docs/freebsd-kmod.md, sections 12-14), and their self-test: each known defect,
//! planted in a copy, must make its check fail.

use super::EI_OSABI;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, Rela, SectionHeader, Sym};
use object::Endianness;
use std::collections::{BTreeMap, BTreeSet};

/// `__FreeBSD_version` range of the kernel dependency, module version, sysinit order.
const KERNEL_DEP: [i32; 3] = [1_500_068, 1_500_068, 1_599_999];
const MODULE_VERSION: i32 = 1;
const SI_SUB_SMP_PLUS_1: u32 = 0x0f00_0001;
const SI_ORDER_ANY: u32 = 0x0fff_ffff;
/// `MDT_DEPEND`, `MDT_MODULE`, `MDT_VERSION`, `MDT_STRUCT_VERSION` (sys/sys/module.h).
const MDT_DEPEND: i32 = 1;
const MDT_MODULE: i32 = 2;
const MDT_VERSION: i32 = 3;
const MDT_STRUCT_VERSION: i32 = 1;
/// The only function allowed to read x18 (the per-CPU pointer).
const X18_ALLOWED: &str = "vmm_freebsd_pcpu";
/// The world switch's functions that touch x18 (linked in for VHE kernels).
const X18_SWITCH: &[&str] = vmm_testbed_harness::build::X18_ALLOWED;
/// Relocation types arm64's `elf_reloc_internal` applies to modules.
const RELOCS_OK: &[(u32, &str)] = &[
    (elf::R_AARCH64_NONE, "NONE"),
    (elf::R_AARCH64_ABS64, "ABS64"),
    (elf::R_AARCH64_GLOB_DAT, "GLOB_DAT"),
    (elf::R_AARCH64_JUMP_SLOT, "JUMP_SLOT"),
    (elf::R_AARCH64_RELATIVE, "RELATIVE"),
];
/// `DT_RELR`/`DT_RELRSZ`/`DT_RELRENT`: packed relocations link_elf does not know.
const DT_RELR_TAGS: [u32; 3] = [36, 35, 37];

/// The outcome of [`check_ko`]: one line per check.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
}

impl Report {
    fn check(
        &mut self,
        ok: bool,
        what: &str,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) {
        if ok {
            self.passed.push(what.to_string());
        } else {
            self.failed
                .push(format!("{what}: expected {expected}, found {found}"));
        }
    }
}

type Hdr = elf::FileHeader64<Endianness>;

/// One dynamic relocation: type, symbol name ("" for none), addend.
#[derive(Debug, Clone)]
struct Reloc {
    rtype: u32,
    sym: String,
    sym_value: u64,
    addend: i64,
}

/// What the checks need from the ELF file.
struct Ko<'a> {
    data: &'a [u8],
    /// (vaddr, file offset, file size) of each PT_LOAD.
    loads: Vec<(u64, u64, u64)>,
    relocs: BTreeMap<u64, Reloc>,
}

impl Ko<'_> {
    /// File bytes at virtual address `va`, `len` long.
    fn bytes(&self, va: u64, len: u64) -> Option<&[u8]> {
        let end = va.checked_add(len)?;
        let &(v, off, _) = self
            .loads
            .iter()
            .find(|&&(v, _, size)| va >= v && end <= v.saturating_add(size))?;
        let start = usize::try_from(off.checked_add(va - v)?).ok()?;
        self.data
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }
    fn u32_at(&self, va: u64) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(va, 4)?.try_into().ok()?))
    }
    fn i32_at(&self, va: u64) -> Option<i32> {
        self.u32_at(va).map(|v| v as i32)
    }
    /// The pointer the kernel linker would store at `va`: a RELATIVE relocation's
    /// addend, a symbol relocation's "symbol + addend" (the name for undefined ones),
    /// or the bytes themselves.
    fn ptr_at(&self, va: u64) -> Option<Ptr> {
        if let Some(r) = self.relocs.get(&va) {
            return Some(match r.rtype {
                elf::R_AARCH64_RELATIVE => Ptr::Addr(r.addend as u64),
                _ if r.sym_value == 0 => Ptr::Sym(r.sym.clone()),
                _ => Ptr::Addr(r.sym_value.wrapping_add(r.addend as u64)),
            });
        }
        let b = self.bytes(va, 8)?;
        Some(Ptr::Addr(u64::from_le_bytes(b.try_into().ok()?)))
    }
    fn cstr_at(&self, va: u64) -> Option<String> {
        let (v, off, size) = self
            .loads
            .iter()
            .copied()
            .find(|&(v, _, size)| va >= v && va < v.saturating_add(size))?;
        let start = usize::try_from(off + (va - v)).ok()?;
        let end = usize::try_from(off + size).ok()?;
        let s = self.data.get(start..end)?;
        let n = s.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(s.get(..n)?).into_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ptr {
    Addr(u64),
    Sym(String),
}

impl Ptr {
    fn addr(&self) -> Option<u64> {
        match self {
            Ptr::Addr(a) => Some(*a),
            Ptr::Sym(_) => None,
        }
    }
}

/// Every structural check of a vmm.ko, on its bytes (docs/freebsd-kmod.md).
pub fn check_ko(data: &[u8], blob: &[u8], symbols: &str, x18: &[(String, String)]) -> Report {
    let mut r = Report::default();
    if let Err(e) = check_elf(data, symbols, &mut r) {
        r.failed.push(format!(
            "ELF parse: expected a readable ELF64 file, found {e}"
        ));
    }
    check_x18(x18, &mut r);
    let found = !blob.is_empty() && data.windows(blob.len()).any(|w| w == blob);
    r.check(
        found,
        "EL2 blob embedded",
        format!("the {} bytes of el2-nvhe.bin inside vmm.ko", blob.len()),
        "no copy of them",
    );
    r
}

/// A world-switch guest entry (`vmm_el2_switch::enter_guest`, `::vhe::enter_guest`):
/// the one kind of function whose frame spans both PAC key switches of a guest's run.
fn is_switch_entry(f: &str) -> bool {
    f.contains("vmm_el2_switch") && f.ends_with("enter_guest")
}

/// vmm.ko is built with pac-ret: a function that signs its return address with the
/// host's keys and checks it after switching to the guest's (or back) fails the check.
/// So a function that writes a key register either signs nothing (a leaf) or is a
/// switch entry, which signs and checks with the host's keys around the whole run.
/// `writers`: each function writing a key register, and whether it signs.
pub fn check_pac_keys(writers: &[(String, bool)], r: &mut Report) {
    let bad: Vec<&str> = writers
        .iter()
        .filter(|(f, signs)| *signs && !is_switch_entry(f))
        .map(|(f, _)| f.as_str())
        .collect();
    r.check(
        bad.is_empty(),
        "PAC keys written only where no signed frame sees them change",
        "key registers written in leaf functions or a switch entry",
        format!("signing functions {}", bad.join(", ")),
    );
    r.check(
        writers.iter().any(|(f, _)| is_switch_entry(f)),
        "guest PAC key switch linked in",
        "a key register written in a switch entry",
        "none (the scan may be broken)",
    );
}

/// `check_pac_keys` must fail on a signing function that is not a switch entry.
pub(super) fn self_test_pac_keys(writers: &[(String, bool)]) -> Result<(), String> {
    let mut planted = writers.to_vec();
    planted.push(("vmm_el2_switch_optional_to_guest".into(), true));
    let mut r = Report::default();
    check_pac_keys(&planted, &mut r);
    if r.failed.iter().any(|f| f.contains("PAC keys written only")) {
        Ok(())
    } else {
        Err(
            "check-kmod self-test: a signing key writer outside the switch entries was not caught"
                .into(),
        )
    }
}

fn check_x18(x18: &[(String, String)], r: &mut Report) {
    let bad: Vec<String> = x18
        .iter()
        .filter(|(f, insn)| {
            // Only a read: `mov xN, x18` in the one allowed function; the switch's
            // save and restore (stp/ldp) in its entry and exit.
            let read =
                f == X18_ALLOWED && insn.starts_with("mov") && insn.trim_end().ends_with("x18");
            let switch = X18_SWITCH.contains(&f.as_str())
                && (insn.starts_with("stp") || insn.starts_with("ldp"));
            !(read || switch)
        })
        .map(|(f, i)| format!("{f}: {i}"))
        .collect();
    r.check(
        bad.is_empty(),
        "x18 only read in vmm_freebsd_pcpu",
        format!("x18 only as `mov xN, x18` in {X18_ALLOWED} and saved/restored in {X18_SWITCH:?}"),
        bad.join("; "),
    );
    r.check(
        X18_SWITCH.iter().all(|s| x18.iter().any(|(f, _)| f == s)),
        "VHE world switch linked in",
        format!("{X18_SWITCH:?} in the module (the VHE path; the nVHE path is the blob)"),
        "missing",
    );
    r.check(
        x18.iter().any(|(f, _)| f == X18_ALLOWED),
        "per-CPU read present",
        format!("one x18 read in {X18_ALLOWED}"),
        "none (the scan may be broken)",
    );
}

fn check_elf(data: &[u8], symbols: &str, r: &mut Report) -> Result<(), String> {
    let hdr = Hdr::parse(data).map_err(|e| e.to_string())?;
    let e = hdr.endian().map_err(|e| e.to_string())?;
    let ident = hdr.e_ident();
    r.check(
        ident.class == elf::ELFCLASS64 && ident.data == elf::ELFDATA2LSB,
        "ELF64 little endian",
        "ELFCLASS64, ELFDATA2LSB",
        format!("class {}, data {}", ident.class, ident.data),
    );
    r.check(
        ident.os_abi == elf::ELFOSABI_FREEBSD,
        "OS/ABI FreeBSD",
        elf::ELFOSABI_FREEBSD,
        ident.os_abi,
    );
    r.check(
        hdr.e_machine(e) == elf::EM_AARCH64,
        "machine AArch64",
        elf::EM_AARCH64,
        hdr.e_machine(e),
    );
    r.check(
        hdr.e_type(e) == elf::ET_DYN,
        "type ET_DYN (kmod.mk on arm64: -Bshareable)",
        "ET_DYN (3)",
        hdr.e_type(e),
    );

    // Segments.
    let phdrs = hdr
        .program_headers(e, data)
        .map_err(|err| err.to_string())?;
    let mut loads = Vec::new();
    let mut flags = Vec::new();
    let mut dynamic = None;
    for ph in phdrs {
        match ph.p_type(e) {
            elf::PT_LOAD => {
                loads.push((ph.p_vaddr(e), ph.p_offset(e), ph.p_filesz(e)));
                flags.push(ph.p_flags(e));
            }
            elf::PT_DYNAMIC => dynamic = ph.dynamic(e, data).map_err(|err| err.to_string())?,
            _ => {}
        }
    }
    let phdr_end = hdr.e_phoff(e) + u64::from(hdr.e_phnum(e)) * u64::from(hdr.e_phentsize(e));
    let first = loads.first().copied();
    r.check(
        first.is_some_and(|(_, off, size)| off == 0 && size >= phdr_end),
        "first PT_LOAD holds the ELF and program headers (loader preload)",
        format!("offset 0, at least {phdr_end:#x} bytes"),
        format!("{first:x?}"),
    );
    let wx = flags
        .iter()
        .any(|f| f & elf::PF_W != 0 && f & elf::PF_X != 0);
    let has = |want: u32| {
        flags
            .iter()
            .any(|&f| f & (elf::PF_R | elf::PF_W | elf::PF_X) == want)
    };
    r.check(
        !wx && has(elf::PF_R | elf::PF_X) && has(elf::PF_R | elf::PF_W),
        "PT_LOAD protections (text R+X, data R+W, none W+X)",
        "R+X and R+W segments and no W+X",
        format!("{flags:?}"),
    );
    let dynamic = dynamic.unwrap_or(&[]);
    let tags: BTreeSet<u32> = dynamic.iter().map(|d| d.d_tag.get(e) as u32).collect();
    r.check(
        tags.contains(&elf::DT_HASH),
        "DT_HASH (link_elf looks symbols up through it)",
        "a DT_HASH entry",
        format!("tags {tags:?}"),
    );
    r.check(
        !DT_RELR_TAGS.iter().any(|t| tags.contains(t)),
        "no DT_RELR",
        "no packed relative relocations",
        "DT_RELR present",
    );
    r.check(
        !tags.contains(&elf::DT_NEEDED),
        "no DT_NEEDED (no shared library, no libc)",
        "none",
        "DT_NEEDED entries",
    );

    // Sections.
    let sections = hdr.sections(e, data).map_err(|err| err.to_string())?;
    for name in [
        "set_modmetadata_set",
        "set_sysinit_set",
        ".dynsym",
        ".hash",
        ".dynamic",
        ".text",
    ] {
        r.check(
            sections.section_by_name(e, name.as_bytes()).is_some(),
            &format!("section {name}"),
            "present",
            "missing",
        );
    }

    // Dynamic symbols.
    let dynsym = sections
        .symbols(e, data, elf::SHT_DYNSYM)
        .map_err(|err| err.to_string())?;
    let mut undefined = BTreeSet::new();
    let mut exported = BTreeSet::new();
    let mut dyn_names = Vec::new();
    for s in dynsym.iter().skip(1) {
        let name = String::from_utf8_lossy(dynsym.symbol_name(e, s).unwrap_or(b"?")).into_owned();
        if s.is_undefined(e) {
            undefined.insert(name.clone());
        } else if s.st_bind() != elf::STB_LOCAL {
            exported.insert(name.clone());
        }
        dyn_names.push((name, s.st_value(e)));
    }
    let listed: BTreeSet<String> = symbols
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let unlisted: Vec<&String> = undefined.difference(&listed).collect();
    r.check(
        unlisted.is_empty() && !undefined.is_empty(),
        "undefined symbols are FreeBSD kernel symbols (vmm-kmod/freebsd/SYMBOLS)",
        "every undefined symbol listed in SYMBOLS",
        format!("not listed: {unlisted:?}"),
    );
    let bounds = [
        "__start_set_modmetadata_set",
        "__stop_set_modmetadata_set",
        "__start_set_sysinit_set",
        "__stop_set_sysinit_set",
    ];
    let extra: Vec<&String> = exported
        .iter()
        .filter(|n| !bounds.contains(&n.as_str()))
        .collect();
    let missing: Vec<&&str> = bounds.iter().filter(|b| !exported.contains(**b)).collect();
    r.check(
        extra.is_empty() && missing.is_empty(),
        "exported symbols: exactly the linker set bounds",
        format!("{bounds:?}"),
        format!("extra {extra:?}, missing {missing:?}"),
    );
    let symtab = sections
        .symbols(e, data, elf::SHT_SYMTAB)
        .map_err(|err| err.to_string())?;
    let foreign: Vec<String> = symtab
        .iter()
        .chain(dynsym.iter())
        .filter_map(|s| {
            let n = String::from_utf8_lossy(
                symtab
                    .symbol_name(e, s)
                    .or_else(|_| dynsym.symbol_name(e, s))
                    .ok()?,
            )
            .into_owned();
            let std = n.contains("3std")
                || n.starts_with("std::")
                || n.contains("GLIBC")
                || n.starts_with("__libc");
            std.then_some(n)
        })
        .collect();
    r.check(
        foreign.is_empty(),
        "no std or libc symbols",
        "none",
        format!("{foreign:?}"),
    );

    // Relocations.
    let mut relocs = BTreeMap::new();
    let mut bad = BTreeMap::new();
    for name in [".rela.dyn", ".rela.plt"] {
        let Some((_, sh)) = sections.section_by_name(e, name.as_bytes()) else {
            continue;
        };
        let rels: &[elf::Rela64<Endianness>] =
            sh.data_as_array(e, data).map_err(|err| err.to_string())?;
        for rel in rels {
            let t = rel.r_type(e, false);
            if !RELOCS_OK.iter().any(|(k, _)| *k == t) {
                *bad.entry(t).or_insert(0u32) += 1;
            }
            let si = rel.r_sym(e, false) as usize;
            let (sym, sym_value) = if si == 0 {
                (String::new(), 0)
            } else {
                dyn_names.get(si - 1).cloned().unwrap_or_default()
            };
            relocs.insert(
                rel.r_offset(e),
                Reloc {
                    rtype: t,
                    sym,
                    sym_value,
                    addend: rel.r_addend(e),
                },
            );
        }
    }
    r.check(
        bad.is_empty() && !relocs.is_empty(),
        "relocations only NONE/ABS64/GLOB_DAT/JUMP_SLOT/RELATIVE (arm64 elf_reloc_internal)",
        format!(
            "{:?}",
            RELOCS_OK.iter().map(|(_, n)| *n).collect::<Vec<_>>()
        ),
        format!("other types (type: count) {bad:?}"),
    );

    // Relocated words must be in writable segments: link_elf may write-protect the
    // others per segment, and text must stay shareable and unmodified.
    let writable: Vec<(u64, u64)> = phdrs
        .iter()
        .filter(|ph| ph.p_type(e) == elf::PT_LOAD && ph.p_flags(e) & elf::PF_W != 0)
        .map(|ph| (ph.p_vaddr(e), ph.p_vaddr(e).saturating_add(ph.p_memsz(e))))
        .collect();
    let outside: Vec<String> = relocs
        .keys()
        .filter(|&&o| {
            !writable
                .iter()
                .any(|&(a, b)| o >= a && o.saturating_add(8) <= b)
        })
        .take(5)
        .map(|o| format!("{o:#x}"))
        .collect();
    r.check(
        outside.is_empty(),
        "relocations only in writable segments",
        "every relocated word inside an R+W PT_LOAD",
        format!("relocations at {outside:?}"),
    );

    let ko = Ko {
        data,
        loads,
        relocs,
    };
    let set = |name: &str| -> Vec<Option<Ptr>> {
        let Some((_, sh)) = sections.section_by_name(e, name.as_bytes()) else {
            return Vec::new();
        };
        let (start, size) = (sh.sh_addr(e), sh.sh_size(e));
        (0..size / 8).map(|i| ko.ptr_at(start + i * 8)).collect()
    };
    check_metadata(&ko, &set("set_modmetadata_set"), r);
    check_sysinit(&ko, &set("set_sysinit_set"), r);
    check_bti(&sections, e, data, r);
    Ok(())
}

/// Decodes `set_modmetadata_set` as `linker_file_register_modules` does.
fn check_metadata(ko: &Ko<'_>, entries: &[Option<Ptr>], r: &mut Report) {
    let mut depend = None;
    let mut module = None;
    let mut version = None;
    for md in entries.iter().flatten().filter_map(Ptr::addr) {
        let (Some(v), Some(t), Some(data), Some(cval)) = (
            ko.i32_at(md),
            ko.i32_at(md + 4),
            ko.ptr_at(md + 8).and_then(|p| p.addr()),
            ko.ptr_at(md + 16)
                .and_then(|p| p.addr())
                .and_then(|a| ko.cstr_at(a)),
        ) else {
            continue;
        };
        if v != MDT_STRUCT_VERSION {
            continue;
        }
        match t {
            MDT_DEPEND => {
                let d = [ko.i32_at(data), ko.i32_at(data + 4), ko.i32_at(data + 8)];
                depend = Some((cval, d));
            }
            MDT_MODULE => {
                let name = ko
                    .ptr_at(data)
                    .and_then(|p| p.addr())
                    .and_then(|a| ko.cstr_at(a));
                let handler = ko.ptr_at(data + 8).and_then(|p| p.addr());
                module = Some((cval, name, handler.is_some_and(|h| h != 0)));
            }
            MDT_VERSION => version = Some((cval, ko.i32_at(data))),
            _ => {}
        }
    }
    r.check(
        entries.len() == 3,
        "set_modmetadata_set has three records",
        3,
        entries.len(),
    );
    let want_dep = ("kernel".to_string(), KERNEL_DEP.map(Some));
    r.check(
        depend.as_ref() == Some(&want_dep),
        "MDT_DEPEND on kernel",
        format!("{want_dep:?}"),
        format!("{depend:?}"),
    );
    let want_mod = ("vmm".to_string(), Some("vmm".to_string()), true);
    r.check(
        module.as_ref() == Some(&want_mod),
        "MDT_MODULE \"vmm\" with an event handler",
        format!("{want_mod:?}"),
        format!("{module:?}"),
    );
    let want_ver = ("vmm".to_string(), Some(MODULE_VERSION));
    r.check(
        version.as_ref() == Some(&want_ver),
        "MDT_VERSION vmm 1",
        format!("{want_ver:?}"),
        format!("{version:?}"),
    );
}

/// Decodes `set_sysinit_set`: one sysinit calling `module_register_init`.
fn check_sysinit(ko: &Ko<'_>, entries: &[Option<Ptr>], r: &mut Report) {
    let decoded: Vec<_> = entries
        .iter()
        .flatten()
        .filter_map(Ptr::addr)
        .map(|si| (ko.u32_at(si), ko.u32_at(si + 4), ko.ptr_at(si + 16)))
        .collect();
    let want = (
        Some(SI_SUB_SMP_PLUS_1),
        Some(SI_ORDER_ANY),
        Some(Ptr::Sym("module_register_init".into())),
    );
    r.check(
        decoded.len() == 1 && decoded.first() == Some(&want),
        "sysinit: SI_SUB_SMP + 1, SI_ORDER_ANY, module_register_init",
        format!("[{want:?}]"),
        format!("{decoded:?}"),
    );
}

/// The GNU property note says every input had BTI landing pads and PAC (what the
/// build asked for with -Zbranch-protection=bti,pac-ret).
fn check_bti(
    sections: &object::read::elf::SectionTable<'_, Hdr>,
    e: Endianness,
    data: &[u8],
    r: &mut Report,
) {
    let mut features = None;
    if let Some((_, sh)) = sections.section_by_name(e, b".note.gnu.property") {
        if let Ok(Some(mut notes)) = sh.notes(e, data) {
            while let Ok(Some(note)) = notes.next() {
                if note.name() != b"GNU" || note.n_type(e) != elf::NT_GNU_PROPERTY_TYPE_0 {
                    continue;
                }
                let mut props = note.desc();
                // pr_type u32, pr_datasz u32, data padded to 8.
                while props.len() >= 8 {
                    let t = u32::from_le_bytes([props[0], props[1], props[2], props[3]]);
                    let sz = u32::from_le_bytes([props[4], props[5], props[6], props[7]]) as usize;
                    if t == elf::GNU_PROPERTY_AARCH64_FEATURE_1_AND && sz >= 4 && props.len() >= 12
                    {
                        features = Some(u32::from_le_bytes([
                            props[8], props[9], props[10], props[11],
                        ]));
                    }
                    let step = 8 + sz.div_ceil(8) * 8;
                    if step > props.len() {
                        break;
                    }
                    props = &props[step..];
                }
            }
        }
    }
    let want = elf::GNU_PROPERTY_AARCH64_FEATURE_1_BTI | elf::GNU_PROPERTY_AARCH64_FEATURE_1_PAC;
    r.check(
        features.is_some_and(|f| f & want == want),
        "BTI and PAC in the GNU property note",
        format!("AArch64 feature bits {want:#x}"),
        format!("{features:x?}"),
    );
}

/// A planted defect: the check that must fail, the module bytes, SYMBOLS, x18 uses.
type Case<'a> = (&'a str, Vec<u8>, String, Vec<(String, String)>);

/// Plants one defect at a time and requires the matching check to fail.
pub(super) fn self_test(
    data: &[u8],
    blob: &[u8],
    symbols: &str,
    x18: &[(String, String)],
) -> Result<(), String> {
    let hdr = Hdr::parse(data).map_err(|e| e.to_string())?;
    let e = hdr.endian().map_err(|e| e.to_string())?;
    let sections = hdr.sections(e, data).map_err(|err| err.to_string())?;
    let section = |name: &str| {
        sections.section_by_name(e, name.as_bytes()).map(|(_, sh)| {
            (
                sh.sh_offset(e) as usize,
                sh.sh_addr(e),
                sh.sh_size(e) as usize,
            )
        })
    };
    let mut cases: Vec<Case<'_>> = Vec::new();
    let mut d = data.to_vec();
    d[EI_OSABI] = 0;
    cases.push(("OS/ABI FreeBSD", d, symbols.into(), x18.to_vec()));
    let mut d = data.to_vec();
    d[16] = elf::ET_EXEC as u8;
    cases.push(("type ET_DYN", d, symbols.into(), x18.to_vec()));
    if let Some(pos) = data.windows(blob.len().max(1)).position(|w| w == blob) {
        let mut d = data.to_vec();
        d[pos + blob.len() / 2] ^= 0xff;
        cases.push(("EL2 blob embedded", d, symbols.into(), x18.to_vec()));
    }
    let no_printf: String = symbols
        .lines()
        .filter(|l| !l.starts_with("printf "))
        .map(|l| format!("{l}\n"))
        .collect();
    cases.push(("undefined symbols", data.to_vec(), no_printf, x18.to_vec()));
    let mut x = x18.to_vec();
    x.push(("vmm_freebsd_pcpu".into(), "mov x18, x0".into()));
    cases.push(("x18 only read", data.to_vec(), symbols.into(), x));
    if let Some((off, _, size)) = section(".rela.dyn").filter(|s| s.2 >= 24) {
        let mut d = data.to_vec();
        // r_info of the first entry: type in the low 32 bits. 275 = ADR_PREL_PG_HI21.
        d[off + 8..off + 12].copy_from_slice(&275u32.to_le_bytes());
        let _ = size;
        cases.push(("relocations only", d, symbols.into(), x18.to_vec()));
        // Point the first modmetadata entry 8 bytes off: the records no longer decode.
        if let Some((_, set_addr, _)) = section("set_modmetadata_set") {
            let rels = &data[off..off + size];
            if let Some(i) = (0..size / 24).find(|i| {
                u64::from_le_bytes(rels[i * 24..i * 24 + 8].try_into().unwrap_or_default())
                    == set_addr
            }) {
                let mut d = data.to_vec();
                let a = off + i * 24 + 16;
                let add = i64::from_le_bytes(d[a..a + 8].try_into().unwrap_or_default()) + 8;
                d[a..a + 8].copy_from_slice(&add.to_le_bytes());
                cases.push(("MDT_", d, symbols.into(), x18.to_vec()));
            }
        }
    }
    if cases.len() < 7 {
        return Err(format!(
            "check-kmod self-test: expected 7 planted defects, could plant only {}",
            cases.len()
        ));
    }
    for (check, d, syms, x) in &cases {
        let r = check_ko(d, blob, syms, x);
        if !r.failed.iter().any(|f| f.contains(check)) {
            return Err(format!(
                "check-kmod self-test: expected the check \"{check}\" to fail on a module with that defect, found failures {:?}",
                r.failed
            ));
        }
    }
    eprintln!(
        "xtask: check-kmod: self-test: {} planted defects all caught",
        cases.len()
    );
    Ok(())
}
