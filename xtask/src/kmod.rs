//! `cargo xtask build-kmod` and `cargo xtask check-kmod`: vmm.ko, the FreeBSD 15 arm64
//! kernel module, built and linked as FreeBSD's kmod.mk links modules on arm64, then
//! checked against what FreeBSD's kernel linker (link_elf.c, arm64 elf_machdep.c)
//! accepts. docs/freebsd-kmod.md (sections 12-14) records the facts and the recipe.
//!
//! Build:
//! 1. the EL2 blob (`cargo xtask build-el2`);
//! 2. the `vmm-ko` staticlib (vmm-kmod/ko/) for aarch64-unknown-none-softfloat with
//!    build-std, `-Zfixed-x18`, PIC and `-Zbranch-protection=bti,pac-ret`, embedding
//!    the blob;
//! 3. `ld -r --no-relax` of the whole archive, then `ld -shared -znotext -znorelro
//!    --no-relax --hash-style=sysv` with a version script that keeps only the linker
//!    set bounds global (FreeBSD's `EXPORT_SYMS=NO`), with rust-lld (or
//!    aarch64-linux-gnu-ld when rust-lld is missing);
//! 4. `e_ident[EI_OSABI] = ELFOSABI_FREEBSD`, as FreeBSD's toolchain writes it.
//!
//! `check-kmod` lints, builds and then runs the structural checks of [`check`] on the
//! module, with their self-test.

mod check;

use object::elf;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmm_testbed_harness::cmd::{cargo, output, run};
use vmm_testbed_harness::{build, repo_root};

const TARGET: &str = "aarch64-unknown-none-softfloat";
/// Index of the OS/ABI byte in `e_ident`.
const EI_OSABI: usize = 7;
/// RUSTFLAGS of the module's Rust code (docs/freebsd-kmod.md, section 13 and 14).
const RUSTFLAGS: &str = "-Zfixed-x18 -Crelocation-model=pic -Zbranch-protection=bti,pac-ret";

/// Where vmm.ko's build goes: $VMM_KMOD_TARGET_DIR or target/kmod.
pub fn target_dir() -> PathBuf {
    std::env::var_os("VMM_KMOD_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/kmod"))
}

/// The module file.
pub fn ko_path() -> PathBuf {
    target_dir().join("vmm.ko")
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// rust-lld of the active toolchain (`-flavor gnu`), or aarch64-linux-gnu-ld.
fn linker() -> Result<Command, String> {
    let sysroot = output(
        "rustc --print sysroot",
        Command::new("rustc").args(["--print", "sysroot"]),
    )?;
    let vv = output("rustc -vV", Command::new("rustc").arg("-vV"))?;
    let host = vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or("rustc -vV printed no host line")?;
    let lld = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/rust-lld");
    if lld.exists() {
        let mut c = Command::new(lld);
        c.args(["-flavor", "gnu"]);
        Ok(c)
    } else {
        Ok(Command::new("aarch64-linux-gnu-ld"))
    }
}

/// Builds vmm.ko and returns its path.
pub fn build_kmod() -> Result<PathBuf, String> {
    let blob = build::build_el2()?;
    let dir = target_dir();
    run(
        "build the vmm-ko static library",
        cargo()
            .current_dir(repo_root())
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_NONE_SOFTFLOAT_RUSTFLAGS",
                RUSTFLAGS,
            )
            .env("VMM_EL2_BLOB", &blob)
            .args(["build", "--release", "--target", TARGET])
            .args([
                "-Zbuild-std=core,alloc",
                "-Zbuild-std-features=compiler-builtins-mem",
            ])
            .arg("--manifest-path")
            .arg(repo_root().join("vmm-kmod/ko/Cargo.toml"))
            .arg("--target-dir")
            .arg(&dir),
    )?;
    let lib = dir.join(TARGET).join("release/libvmm_ko.a");
    let kld = dir.join("vmm.kld");
    let script = dir.join("vmm.ko.version");
    let ko = ko_path();
    // FreeBSD's EXPORT_SYMS=NO: nothing of ours is exported, except the linker-set
    // bounds link_elf looks up by name to find the module metadata and sysinits.
    std::fs::write(
        &script,
        "{ global: __start_set_*; __stop_set_*; local: *; };\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    run(
        "ld -r (kmod.mk: combine the objects)",
        linker()?
            .args(["-r", "--no-relax", "--whole-archive"])
            .arg(&lib)
            .arg("-o")
            .arg(&kld),
    )?;
    run(
        "ld -shared (kmod.mk: -Bshareable -znotext -znorelro)",
        linker()?
            .args([
                "-m",
                "aarch64elf",
                "-shared",
                "-znotext",
                "-znorelro",
                "--no-relax",
                "--hash-style=sysv",
                "--build-id=sha1",
                "-z",
                "max-page-size=4096",
            ])
            .arg(format!("--version-script={}", script.display()))
            .arg("-o")
            .arg(&ko)
            .arg(&kld),
    )?;
    let mut bytes = read(&ko)?;
    let osabi = bytes
        .get_mut(EI_OSABI)
        .ok_or("vmm.ko is shorter than an ELF header")?;
    *osabi = elf::ELFOSABI_FREEBSD;
    std::fs::write(&ko, &bytes).map_err(|e| format!("cannot write {}: {e}", ko.display()))?;
    eprintln!("xtask: vmm.ko: {} ({} bytes)", ko.display(), bytes.len());
    Ok(ko)
}

/// fmt check of vmm-kmod/ko/ and clippy of the code only the kernel build compiles (the
/// FreeBSD glue in vmm-freebsd and the vmm-ko crate) for the module's target.
pub fn lint_kmod() -> Result<(), String> {
    let blob = build::build_el2()?;
    run(
        "format check of vmm-kmod/ko/",
        cargo()
            .current_dir(repo_root())
            .args(["fmt", "--check", "--manifest-path"])
            .arg(repo_root().join("vmm-kmod/ko/Cargo.toml")),
    )?;
    for manifest in ["Cargo.toml", "vmm-kmod/ko/Cargo.toml"] {
        let mut cmd = cargo();
        cmd.current_dir(repo_root())
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTFLAGS")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_NONE_SOFTFLOAT_RUSTFLAGS",
                RUSTFLAGS,
            )
            .env("VMM_EL2_BLOB", &blob)
            .args(["clippy", "--target", TARGET, "-Zbuild-std=core,alloc"])
            .arg("--manifest-path")
            .arg(repo_root().join(manifest))
            .arg("--target-dir")
            .arg(target_dir());
        if manifest == "Cargo.toml" {
            cmd.args(["-p", "vmm-freebsd"]);
        }
        cmd.args(["--", "-D", "warnings"]);
        run(&format!("clippy ({manifest}, {TARGET})"), &mut cmd)?;
    }
    Ok(())
}

/// Lints, builds vmm.ko (incrementally) and checks it; prints one line per check.
pub fn check_kmod() -> Result<(), String> {
    lint_kmod()?;
    let ko = build_kmod()?;
    let data = read(&ko)?;
    let blob = read(&build::el2_blob())?;
    let symbols = read(&repo_root().join("vmm-kmod/freebsd/SYMBOLS"))?;
    let symbols = String::from_utf8_lossy(&symbols).into_owned();
    let x18 = build::x18_uses(&ko)?;
    let mut report = check::check_ko(&data, &blob, &symbols, &x18);
    let pac_writers = build::pac_key_writers(&ko)?;
    check::check_pac_keys(&pac_writers, &mut report);
    // The checks must be able to fail: each known defect, planted in a copy of the
    // module (or of the inputs), must make its check fail.
    check::self_test(&data, &blob, &symbols, &x18)?;
    check::self_test_pac_keys(&pac_writers)?;
    for ok in &report.passed {
        eprintln!("xtask: check-kmod: ok: {ok}");
    }
    if report.failed.is_empty() {
        eprintln!(
            "xtask: check-kmod: {} passed for {}",
            report.passed.len(),
            ko.display()
        );
        Ok(())
    } else {
        Err(format!(
            "check-kmod: {} of {} checks failed:\n{}",
            report.failed.len(),
            report.failed.len() + report.passed.len(),
            report.failed.join("\n")
        ))
    }
}
