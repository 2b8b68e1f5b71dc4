//! A devicetree the user gives with `-t`: checked, and, when `-e` or `-i` need it,
//! re-emitted with /chosen's bootargs and initrd range set.
//!
//! The header is checked here field by field, the structure block is walked token by
//! token with every offset and length checked against the block (the devicetree spec,
//! section 5.4), and vm-fdt writes the new blob, so every node, property, memory
//! reservation and the boot CPU id come through unchanged except the /chosen properties
//! we set.
//!
//! Why not fdt-rs for the walk (it was used before): it trusts the blob's lengths and
//! asserts on a structure block that ends inside a token, so a hostile `-t` file
//! panicked bhyveload instead of being refused (found by the bhyveload fuzz target;
//! fuzz/regressions/bhyveload/). The walk is some forty lines; fdt-rs stays only as an
//! independent reader in the tests.

use thiserror::Error;
use vm_fdt::{FdtReserveEntry, FdtWriter};

/// The largest devicetree booting.rst allows.
pub const DTB_MAX: usize = 2 << 20;
const FDT_MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
/// The devicetree format version we read and write (dtc writes 17).
const FDT_VERSION: u32 = 17;

/// Why a devicetree is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DtbError {
    #[error("larger than 2 MiB ({0} bytes)")]
    TooLarge(u64),
    #[error("truncated ({have} bytes, header says {want})")]
    Truncated { have: usize, want: usize },
    #[error("not a flattened devicetree (bad magic)")]
    BadMagic,
    #[error("unsupported devicetree version {version} (compatible with {last_comp})")]
    Version { version: u32, last_comp: u32 },
    #[error("malformed devicetree: {0}")]
    Malformed(String),
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The header fields we use, checked against the blob.
#[derive(Debug, Clone, Copy)]
struct Header {
    totalsize: usize,
    off_struct: usize,
    off_strings: usize,
    off_rsvmap: usize,
    boot_cpuid: u32,
    size_strings: usize,
    size_struct: usize,
}

fn malformed(why: impl Into<String>) -> DtbError {
    DtbError::Malformed(why.into())
}

fn header(b: &[u8]) -> Result<Header, DtbError> {
    if b.len() > DTB_MAX {
        return Err(DtbError::TooLarge(b.len() as u64));
    }
    if b.len() < HEADER_LEN {
        if b.len() >= 4 && be32(b, 0) != FDT_MAGIC {
            return Err(DtbError::BadMagic);
        }
        return Err(DtbError::Truncated {
            have: b.len(),
            want: HEADER_LEN,
        });
    }
    if be32(b, 0) != FDT_MAGIC {
        return Err(DtbError::BadMagic);
    }
    let h = Header {
        totalsize: be32(b, 4) as usize,
        off_struct: be32(b, 8) as usize,
        off_strings: be32(b, 12) as usize,
        off_rsvmap: be32(b, 16) as usize,
        boot_cpuid: be32(b, 28),
        size_strings: be32(b, 32) as usize,
        size_struct: be32(b, 36) as usize,
    };
    let (version, last_comp) = (be32(b, 20), be32(b, 24));
    if version < FDT_VERSION || last_comp > FDT_VERSION {
        return Err(DtbError::Version { version, last_comp });
    }
    if h.totalsize > DTB_MAX {
        return Err(DtbError::TooLarge(h.totalsize as u64));
    }
    if h.totalsize > b.len() {
        return Err(DtbError::Truncated {
            have: b.len(),
            want: h.totalsize,
        });
    }
    if !h.off_rsvmap.is_multiple_of(8) || h.off_rsvmap < HEADER_LEN {
        return Err(malformed("memory reservation block misplaced"));
    }
    if !h.off_struct.is_multiple_of(4) || h.off_struct < HEADER_LEN {
        return Err(malformed("structure block misplaced"));
    }
    // usize is 64 bits wide on every host we build for, so these sums of u32s cannot wrap.
    if h.off_struct + h.size_struct > h.totalsize || h.size_struct < 4 {
        return Err(malformed("structure block outside the blob"));
    }
    if h.off_strings + h.size_strings > h.totalsize {
        return Err(malformed("strings block outside the blob"));
    }
    Ok(h)
}

/// The memory reservation entries, up to the terminating (0, 0).
fn reservations(b: &[u8], h: &Header) -> Result<Vec<FdtReserveEntry>, DtbError> {
    let mut out = Vec::new();
    let mut off = h.off_rsvmap;
    loop {
        if off + 16 > h.totalsize {
            return Err(malformed("memory reservation block has no end"));
        }
        let addr = u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"));
        let size = u64::from_be_bytes(b[off + 8..off + 16].try_into().expect("8 bytes"));
        if addr == 0 && size == 0 {
            return Ok(out);
        }
        out.push(
            FdtReserveEntry::new(addr, size).map_err(|e| malformed(format!("reservation: {e}")))?,
        );
        off += 16;
    }
}

/// A name in the strings block.
fn prop_name<'a>(b: &'a [u8], h: &Header, nameoff: usize) -> Result<&'a str, DtbError> {
    let block = &b[h.off_strings..h.off_strings + h.size_strings];
    let s = block
        .get(nameoff..)
        .ok_or_else(|| malformed("property name outside the strings block"))?;
    let end = s
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| malformed("unterminated property name"))?;
    std::str::from_utf8(&s[..end]).map_err(|_| malformed("property name is not UTF-8"))
}

/// The structure block's tokens (FDT_BEGIN_NODE 1, FDT_END_NODE 2, FDT_PROP 3, FDT_NOP
/// 4, FDT_END 9): one root node, balanced, then FDT_END inside the block.
fn structure(b: &[u8], h: &Header) -> Result<Vec<Token>, DtbError> {
    // header() checked that the block lies inside the blob.
    let block = &b[h.off_struct..h.off_struct + h.size_struct];
    let word = |off: usize| -> Result<u32, DtbError> {
        block
            .get(
                off..off
                    .checked_add(4)
                    .ok_or_else(|| malformed("offset overflow"))?,
            )
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| malformed("structure block ends inside a token"))
    };
    let align4 = |off: usize| off.checked_add(3).map(|o| o & !3);
    let mut tokens = Vec::new();
    let mut off = 0usize;
    let mut depth = 0usize;
    let mut closed_root = false;
    loop {
        let tag = word(off)?;
        off += 4;
        match tag {
            1 => {
                let rest = block.get(off..).unwrap_or(&[]);
                let len = rest
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or_else(|| malformed("unterminated node name"))?;
                let name = std::str::from_utf8(&rest[..len])
                    .map_err(|_| malformed("node name is not UTF-8"))?;
                if closed_root || (depth == 0 && !name.is_empty()) {
                    return Err(malformed("more than one root node"));
                }
                depth += 1;
                tokens.push(Token::Begin(name.to_string()));
                off = align4(off + len + 1).ok_or_else(|| malformed("offset overflow"))?;
            }
            2 => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| malformed("unbalanced end of node"))?;
                closed_root |= depth == 0;
                tokens.push(Token::End);
            }
            3 => {
                let len = word(off)? as usize;
                let nameoff = word(off + 4)? as usize;
                off += 8;
                if depth == 0 {
                    return Err(malformed("property outside any node"));
                }
                let value = off
                    .checked_add(len)
                    .and_then(|end| block.get(off..end))
                    .ok_or_else(|| malformed("property value past the structure block"))?;
                let name = prop_name(b, h, nameoff)?;
                tokens.push(Token::Prop(name.to_string(), value.to_vec()));
                off = align4(off + len).ok_or_else(|| malformed("offset overflow"))?;
            }
            4 => {}
            9 => break,
            t => return Err(malformed(format!("unknown structure token {t:#x}"))),
        }
    }
    if !closed_root || depth != 0 {
        return Err(malformed("nodes are not closed"));
    }
    Ok(tokens)
}

/// One token of the structure block, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Begin(String),
    Prop(String, Vec<u8>),
    End,
}

/// A checked devicetree: its tokens and what the header carries besides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub tokens: Vec<Token>,
    pub reservations: Vec<FdtReserveEntry>,
    pub boot_cpuid: u32,
    /// The header's totalsize: the blob's length (a file may carry padding after it).
    pub totalsize: usize,
}

/// Checks `b` completely (header, reservations, every token of the structure block,
/// balanced nodes under one root) and returns its contents.
pub fn parse(b: &[u8]) -> Result<Tree, DtbError> {
    let h = header(b)?;
    let reservations = reservations(b, &h)?;
    let tokens = structure(b, &h)?;
    Ok(Tree {
        tokens,
        reservations,
        boot_cpuid: h.boot_cpuid,
        totalsize: h.totalsize,
    })
}

/// The /chosen properties to set in a user's tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChosenPatch {
    pub bootargs: Option<String>,
    pub initrd: Option<(u64, u64)>,
}

impl ChosenPatch {
    pub fn is_empty(&self) -> bool {
        self.bootargs.is_none() && self.initrd.is_none()
    }

    fn replaces(&self, prop: &str) -> bool {
        match prop {
            "bootargs" => self.bootargs.is_some(),
            "linux,initrd-start" | "linux,initrd-end" => self.initrd.is_some(),
            _ => false,
        }
    }

    fn write(&self, w: &mut FdtWriter) -> Result<(), vm_fdt::Error> {
        if let Some(args) = &self.bootargs {
            w.property_string("bootargs", args)?;
        }
        if let Some((start, end)) = self.initrd {
            w.property_u64("linux,initrd-start", start)?;
            w.property_u64("linux,initrd-end", end)?;
        }
        Ok(())
    }
}

/// Re-emits `tree` with `patch` applied to /chosen (created if the tree has none).
pub fn patch(tree: &Tree, patch: &ChosenPatch) -> Result<Vec<u8>, DtbError> {
    let fdt_err = |e: vm_fdt::Error| malformed(e.to_string());
    let mut w = FdtWriter::new_with_mem_reserv(&tree.reservations).map_err(fdt_err)?;
    w.set_boot_cpuid_phys(tree.boot_cpuid);
    let mut open = Vec::new();
    // Depth 1 is the root; /chosen is a node at depth 2 named "chosen".
    let mut in_chosen = false;
    let mut chosen_seen = false;
    let mut pending = false;
    for tok in &tree.tokens {
        match tok {
            Token::Begin(name) => {
                if in_chosen && pending && open.len() == 2 {
                    patch.write(&mut w).map_err(fdt_err)?;
                    pending = false;
                }
                open.push(w.begin_node(name).map_err(fdt_err)?);
                if open.len() == 2 && name == "chosen" {
                    in_chosen = true;
                    chosen_seen = true;
                    pending = true;
                }
            }
            Token::Prop(name, val) => {
                if in_chosen && open.len() == 2 && patch.replaces(name) {
                    continue;
                }
                w.property(name, val).map_err(fdt_err)?;
            }
            Token::End => {
                if in_chosen && open.len() == 2 {
                    if pending {
                        patch.write(&mut w).map_err(fdt_err)?;
                        pending = false;
                    }
                    in_chosen = false;
                }
                if open.len() == 1 && !chosen_seen {
                    let chosen = w.begin_node("chosen").map_err(fdt_err)?;
                    patch.write(&mut w).map_err(fdt_err)?;
                    w.end_node(chosen).map_err(fdt_err)?;
                }
                let node = open
                    .pop()
                    .ok_or_else(|| malformed("unbalanced end of node"))?;
                w.end_node(node).map_err(fdt_err)?;
            }
        }
    }
    let out = w.finish().map_err(fdt_err)?;
    if out.len() > DTB_MAX {
        return Err(DtbError::TooLarge(out.len() as u64));
    }
    Ok(out)
}
