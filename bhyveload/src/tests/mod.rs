//! Unit tests, with builders for the files bhyveload reads (Image headers, ELF files,
//! devicetrees) so every parser is fed crafted good and bad input.

mod cli;
mod fdt;
mod kernel;
mod mutate;
mod placement;
mod userdtb;

use std::collections::BTreeMap;

use crate::userdtb::Token;

/// An arm64 Image: the 64-byte header (booting.rst) followed by `payload` bytes.
pub fn image(text_offset: u64, image_size: u64, flags: u64, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 64 + payload];
    // code0: "b #64" would be typical; the loader must not care.
    b[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
    b[8..16].copy_from_slice(&text_offset.to_le_bytes());
    b[16..24].copy_from_slice(&image_size.to_le_bytes());
    b[24..32].copy_from_slice(&flags.to_le_bytes());
    b[0x38..0x3c].copy_from_slice(b"ARM\x64");
    for (i, x) in b[64..].iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    b
}

/// One PT_LOAD segment for [`elf`].
pub struct Seg {
    pub vaddr: u64,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

/// An ELF64 file: header, program headers, then each segment's data in order.
/// `machine` 183 is EM_AARCH64; `class`/`data` are e_ident[4]/[5].
pub fn elf_with(
    class: u8,
    data: u8,
    etype: u16,
    machine: u16,
    entry: u64,
    segs: &[Seg],
) -> Vec<u8> {
    let phoff = 64u64;
    let phnum = segs.len() as u64;
    let mut off = phoff + 56 * phnum;
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF");
    b.push(class);
    b.push(data);
    b.push(1); // EV_CURRENT
    b.extend_from_slice(&[0; 9]);
    b.extend_from_slice(&etype.to_le_bytes());
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&entry.to_le_bytes());
    b.extend_from_slice(&phoff.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&(phnum as u16).to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(b.len(), 64);
    for s in segs {
        b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&s.vaddr.to_le_bytes());
        b.extend_from_slice(&s.paddr.to_le_bytes());
        b.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        b.extend_from_slice(&s.memsz.to_le_bytes());
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        off += s.data.len() as u64;
    }
    for s in segs {
        b.extend_from_slice(&s.data);
    }
    b
}

/// A little-endian aarch64 ET_EXEC.
pub fn elf(entry: u64, segs: &[Seg]) -> Vec<u8> {
    elf_with(2, 1, 2, 183, entry, segs)
}

/// A devicetree as a map from node path to its properties, read back through
/// userdtb::parse.
pub fn dump(dtb: &[u8]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let tree = crate::userdtb::parse(dtb).expect("devicetree parses");
    let mut out = BTreeMap::new();
    let mut path: Vec<String> = Vec::new();
    for t in tree.tokens {
        match t {
            Token::Begin(n) => {
                path.push(n);
                let p = node_path(&path);
                assert!(
                    out.insert(p.clone(), BTreeMap::new()).is_none(),
                    "duplicate node {p}"
                );
            }
            Token::Prop(name, val) => {
                let p = node_path(&path);
                let props: &mut BTreeMap<String, Vec<u8>> = out.get_mut(&p).expect("node");
                assert!(
                    props.insert(name.clone(), val).is_none(),
                    "duplicate {p}:{name}"
                );
            }
            Token::End => {
                path.pop();
            }
        }
    }
    out
}

fn node_path(path: &[String]) -> String {
    if path.len() <= 1 {
        "/".to_string()
    } else {
        path[1..].iter().fold(String::new(), |acc, n| acc + "/" + n)
    }
}

pub fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}
pub fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}
pub fn strs(v: &[&str]) -> Vec<u8> {
    v.iter().flat_map(|s| s.bytes().chain([0])).collect()
}

/// Decompiles `dtb` with dtc and returns its dts, failing on any warning. None (after
/// printing why) if dtc is not installed.
pub fn dtc(dtb: &[u8]) -> Option<String> {
    let dir = std::env::temp_dir().join(format!(
        "bhyveload-dtc-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.dtb");
    std::fs::write(&f, dtb).unwrap();
    let out = match std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&f)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipping the dtc check: dtc is not installed");
            return None;
        }
        Err(e) => panic!("running dtc: {e}"),
    };
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dtc failed: {stderr}");
    assert!(stderr.trim().is_empty(), "dtc warned:\n{stderr}");
    Some(String::from_utf8(out.stdout).unwrap())
}
