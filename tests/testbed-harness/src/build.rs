//! aarch64 builds: the EL2 blob, the guest programs and the testbed kernel.

use crate::cmd::{cargo, output, run};
use crate::{aarch64_target_dir, repo_root, Error};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL_TARGET: &str = "aarch64-unknown-none-softfloat";
/// Functions allowed to touch x18: the world switch's guest entry/exit pair saves the
/// host's x18 and loads/saves the guest's, and its in-place answer to a guest's register
/// trap saves and reloads the guest's around its call (in the EL2 blob, in the testbed
/// kernel and in vmm.ko, which link the switch for their VHE host mode).
pub const X18_ALLOWED: &[&str] = &["el2_guest_enter", "el2_guest_exit", "el2_answer_trap"];

/// `cargo build --release` of a kernel-side crate: build-std with the per-target
/// rustflags of .cargo/config.toml (-Zfixed-x18), never a global RUSTFLAGS.
fn cargo_kernel(manifest: &Path, envs: &[(&str, &Path)]) -> Result<(), Error> {
    cargo_kernel_sub("build", manifest, envs, &[])
}

fn cargo_kernel_sub(
    sub: &str,
    manifest: &Path,
    envs: &[(&str, &Path)],
    extra: &[&str],
) -> Result<(), Error> {
    let mut cmd = cargo();
    cmd.current_dir(repo_root())
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .args([sub, "--release", "--target", KERNEL_TARGET])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(aarch64_target_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.args(extra);
    run(&format!("{sub} {}", manifest.display()), &mut cmd)
}

/// The aarch64-only crates (not workspace members): `cargo fmt --check` and
/// `cargo clippy -- -D warnings` for the kernel target.
pub fn lint_kernel() -> Result<(), Error> {
    let blob = build_el2()?;
    let guests = build_guests()?;
    let envs = [
        ("VMM_EL2_BLOB", blob.as_path()),
        ("VMM_GUEST_DIR", guests.as_path()),
    ];
    for krate in ["el2/switch", "el2/nvhe", "tests/testbed"] {
        let manifest = repo_root().join(krate).join("Cargo.toml");
        run(
            &format!("format check of {krate}"),
            cargo()
                .args(["fmt", "--check", "--manifest-path"])
                .arg(&manifest),
        )?;
        cargo_kernel_sub("clippy", &manifest, &envs, &["--", "-D", "warnings"])?;
    }
    Ok(())
}

fn release_dir() -> PathBuf {
    aarch64_target_dir().join(KERNEL_TARGET).join("release")
}

pub fn el2_elf() -> PathBuf {
    aarch64_target_dir().join("el2-nvhe.elf")
}

pub fn el2_blob() -> PathBuf {
    aarch64_target_dir().join("el2-nvhe.bin")
}

pub fn testbed_elf() -> PathBuf {
    release_dir().join("testbed")
}

pub fn guest_dir() -> PathBuf {
    aarch64_target_dir().join("guests")
}

fn link_el2(lib: &Path, base: u64, elf: &Path, bin: &Path) -> Result<(), Error> {
    let script = repo_root().join("el2/nvhe/link.ld");
    run(
        "link the EL2 blob",
        Command::new("aarch64-linux-gnu-ld")
            .args(["-nostdlib", "-static", "--no-pie", "--gc-sections", "-T"])
            .arg(&script)
            .arg("--defsym")
            .arg(format!("EL2_LINK_BASE={base:#x}"))
            .arg("-o")
            .arg(elf)
            .arg(lib),
    )?;
    run(
        "objcopy the EL2 blob",
        Command::new("aarch64-linux-gnu-objcopy")
            .args(["-O", "binary"])
            .arg(elf)
            .arg(bin),
    )
}

/// A directory of this build's own for intermediate files, removed when dropped. Two
/// test runs (or a test run and `cargo xtask bench`) may build into the same aarch64
/// target dir at once: each links in its own scratch directory and publishes finished
/// files with `publish`, so no reader ever sees a half-written blob or guest.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Error> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = aarch64_target_dir().join(format!("scratch-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Scratch(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(p: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|source| Error::Io {
        path: p.into(),
        source,
    })
}

/// Moves the finished file `tmp` to `dst` in one rename (same filesystem), unless `dst`
/// already holds the same bytes: then `dst` keeps its modification time, and cargo does
/// not rebuild the testbed kernel that embeds it.
fn publish(tmp: &Path, dst: &Path) -> Result<(), Error> {
    if std::fs::read(dst).ok().as_deref() == Some(&read(tmp)?[..]) {
        return Ok(());
    }
    std::fs::rename(tmp, dst).map_err(|source| Error::Io {
        path: dst.into(),
        source,
    })
}

/// Builds the nVHE EL2 code (el2/nvhe with the switch library) and links it into the
/// flat blob. Links it a second time at another
/// base and requires identical bytes: the blob holds no absolute address.
pub fn build_el2() -> Result<PathBuf, Error> {
    cargo_kernel(&repo_root().join("el2/nvhe/Cargo.toml"), &[])?;
    let lib = release_dir().join("libvmm_el2_nvhe.a");
    let scratch = Scratch::new()?;
    let (elf, bin) = (scratch.path("el2-nvhe.elf"), scratch.path("el2-nvhe.bin"));
    let (alt_elf, alt_bin) = (
        scratch.path("el2-nvhe-alt.elf"),
        scratch.path("el2-nvhe-alt.bin"),
    );
    link_el2(&lib, 0, &elf, &bin)?;
    link_el2(&lib, 0x4000_0000, &alt_elf, &alt_bin)?;
    if read(&bin)? != read(&alt_bin)? {
        return Err(Error::Check(
            "the EL2 blob differs when linked at another base: it contains an absolute address"
                .into(),
        ));
    }
    publish(&elf, &el2_elf())?;
    publish(&bin, &el2_blob())?;
    Ok(el2_blob())
}

/// Assembles every tests/guests/*.S into a flat binary linked at IPA 0x8000_0000.
pub fn build_guests() -> Result<PathBuf, Error> {
    let src = repo_root().join("tests/guests");
    let out = guest_dir();
    std::fs::create_dir_all(&out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let entries = std::fs::read_dir(&src).map_err(|source| Error::Io {
        path: src.clone(),
        source,
    })?;
    let scratch = Scratch::new()?;
    for e in entries {
        let path = e
            .map_err(|source| Error::Io {
                path: src.clone(),
                source,
            })?
            .path();
        if path.extension().and_then(|x| x.to_str()) != Some("S") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("guest")
            .to_string();
        let obj = scratch.path(&format!("{stem}.o"));
        let elf = scratch.path(&format!("{stem}.elf"));
        let bin = scratch.path(&format!("{stem}.bin"));
        run(
            "assemble guest",
            Command::new("aarch64-linux-gnu-as")
                .arg("-o")
                .arg(&obj)
                .arg(&path),
        )?;
        run(
            "link guest",
            Command::new("aarch64-linux-gnu-ld")
                .args([
                    "-nostdlib",
                    "-static",
                    "-Ttext=0x80000000",
                    "-e",
                    "_start",
                    "-o",
                ])
                .arg(&elf)
                .arg(&obj),
        )?;
        run(
            "objcopy guest",
            Command::new("aarch64-linux-gnu-objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(&bin),
        )?;
        publish(&bin, &out.join(format!("{stem}.bin")))?;
    }
    Ok(out)
}

/// Builds the EL2 blob, the guests and the testbed kernel that embeds them.
pub fn build_testbed() -> Result<PathBuf, Error> {
    let blob = build_el2()?;
    let guests = build_guests()?;
    cargo_kernel(
        &repo_root().join("tests/testbed/Cargo.toml"),
        &[("VMM_EL2_BLOB", &blob), ("VMM_GUEST_DIR", &guests)],
    )?;
    Ok(testbed_elf())
}

/// `objdump -d` of `elf`, without the raw instruction bytes.
fn disassemble(elf: &Path) -> Result<String, Error> {
    output(
        "disassemble",
        Command::new("aarch64-linux-gnu-objdump")
            .arg("-d")
            .arg("--no-show-raw-insn")
            .arg(elf),
    )
}

/// Lines of `objdump -d` output naming x18/w18, with the function they are in.
pub fn x18_uses(elf: &Path) -> Result<Vec<(String, String)>, Error> {
    let text = disassemble(elf)?;
    let mut func = String::new();
    let mut uses = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:") {
            func = name.rsplit('<').next().unwrap_or("").to_string();
            continue;
        }
        let Some((_, insn)) = line.split_once(":\t") else {
            continue;
        };
        let hits = insn
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|tok| tok == "x18" || tok == "w18");
        if hits {
            uses.push((func.clone(), insn.trim().to_string()));
        }
    }
    Ok(uses)
}

/// The functions of `elf` that write a pointer-authentication key register, each with
/// whether it signs its own return address (PACIASP/PACIBSP): a function that does and
/// changes the keys between signing and checking fails its own check.
pub fn pac_key_writers(elf: &Path) -> Result<Vec<(String, bool)>, Error> {
    let text = disassemble(elf)?;
    let mut out: Vec<(String, bool)> = Vec::new();
    let (mut func, mut signs, mut writes) = (String::new(), false, false);
    let mut flush = |func: &str, signs: bool, writes: bool| {
        if writes {
            out.push((func.to_string(), signs));
        }
    };
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:") {
            flush(&func, signs, writes);
            func = name.rsplit('<').next().unwrap_or("").to_string();
            (signs, writes) = (false, false);
            continue;
        }
        let Some((_, insn)) = line.split_once(":\t") else {
            continue;
        };
        let insn = insn.trim();
        if insn.starts_with("paciasp") || insn.starts_with("pacibsp") {
            signs = true;
        }
        if let Some(ops) = insn.strip_prefix("msr") {
            let reg = ops.trim().split(',').next().unwrap_or("");
            let key = (reg.starts_with("ap") && reg.contains("key"))
                || ["s3_0_c2_c1_", "s3_0_c2_c2_", "s3_0_c2_c3_"]
                    .iter()
                    .any(|p| reg.starts_with(p));
            writes |= key;
        }
    }
    flush(&func, signs, writes);
    Ok(out)
}

/// Fails on any use of x18 in the kernel-side artifacts outside the EL2 blob's guest
/// entry/exit. Returns a one-line summary.
pub fn check_x18() -> Result<String, Error> {
    let testbed = build_testbed()?;
    let mut bad = Vec::new();
    let el2 = x18_uses(&el2_elf())?;
    for (f, i) in &el2 {
        if !X18_ALLOWED.contains(&f.as_str()) {
            bad.push(format!("EL2 blob {f}: {i}"));
        }
    }
    let kernel = x18_uses(&testbed)?;
    for (f, i) in &kernel {
        if !X18_ALLOWED.contains(&f.as_str()) {
            bad.push(format!("testbed {f}: {i}"));
        }
    }
    if el2.is_empty() {
        bad.push("EL2 blob: no x18 save/restore found in the world switch".into());
    }
    if bad.is_empty() {
        Ok(format!(
            "x18: {} uses in the EL2 blob and {} in the testbed kernel, all in the guest \
             entry/exit",
            el2.len(),
            kernel.len()
        ))
    } else {
        Err(Error::Check(format!(
            "x18 used outside the EL2 world switch:\n{}",
            bad.join("\n")
        )))
    }
}
