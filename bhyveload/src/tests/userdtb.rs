use super::{dtc, dump, strs, u64s};
use crate::fdt::{generate, FdtConfig};
use crate::userdtb::*;
use vm_fdt::{FdtReserveEntry, FdtWriter};

/// A small user tree: a memory reservation, boot cpu 1, /chosen with bootargs and a
/// child node, a node with a property after /chosen.
fn user_tree(with_chosen: bool) -> Vec<u8> {
    let mut w =
        FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x8100_0000, 0x1000).unwrap()])
            .unwrap();
    w.set_boot_cpuid_phys(1);
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_string("compatible", "acme,board").unwrap();
    if with_chosen {
        let c = w.begin_node("chosen").unwrap();
        w.property_string("bootargs", "old args").unwrap();
        w.property_string("stdout-path", "/uart@1000").unwrap();
        let fw = w.begin_node("framebuffer").unwrap();
        w.property_string("bootargs", "not chosen's").unwrap();
        w.end_node(fw).unwrap();
        w.end_node(c).unwrap();
    }
    let u = w.begin_node("uart@1000").unwrap();
    w.property_string("compatible", "ns16550a").unwrap();
    w.property_array_u64("reg", &[0x1000, 0x100]).unwrap();
    w.end_node(u).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn header_u32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

#[test]
fn parse_keeps_everything() {
    let b = user_tree(true);
    let t = parse(&b).unwrap();
    assert_eq!(t.boot_cpuid, 1);
    assert_eq!(t.reservations.len(), 1);
    assert_eq!(t.tokens.first(), Some(&Token::Begin(String::new())));
    assert_eq!(t.tokens.last(), Some(&Token::End));
}

#[test]
fn patch_sets_chosen_and_keeps_the_rest() {
    let b = user_tree(true);
    let t = parse(&b).unwrap();
    let out = patch(
        &t,
        &ChosenPatch {
            bootargs: Some("console=ttyS0 quiet".into()),
            initrd: Some((0x8800_0000, 0x8810_0000)),
        },
    )
    .unwrap();
    let d = dump(&out);
    let chosen = &d["/chosen"];
    assert_eq!(chosen["bootargs"], strs(&["console=ttyS0 quiet"]));
    assert_eq!(chosen["stdout-path"], strs(&["/uart@1000"]));
    assert_eq!(chosen["linux,initrd-start"], u64s(&[0x8800_0000]));
    assert_eq!(chosen["linux,initrd-end"], u64s(&[0x8810_0000]));
    // The child's own bootargs and everything else are untouched.
    assert_eq!(
        d["/chosen/framebuffer"]["bootargs"],
        strs(&["not chosen's"])
    );
    assert_eq!(d["/uart@1000"]["reg"], u64s(&[0x1000, 0x100]));
    assert_eq!(d["/"]["compatible"], strs(&["acme,board"]));
    // Header data survives: boot cpu and memory reservations.
    assert_eq!(header_u32(&out, 28), 1);
    let again = parse(&out).unwrap();
    assert_eq!(again.reservations, t.reservations);
    // Only -i: the user's bootargs stay.
    let out = patch(
        &t,
        &ChosenPatch {
            bootargs: None,
            initrd: Some((1, 2)),
        },
    )
    .unwrap();
    assert_eq!(dump(&out)["/chosen"]["bootargs"], strs(&["old args"]));
    if let Some(dts) = dtc(&out) {
        assert!(dts.contains("/memreserve/"), "{dts}");
    }
}

#[test]
fn patch_adds_chosen_when_missing() {
    let t = parse(&user_tree(false)).unwrap();
    let out = patch(
        &t,
        &ChosenPatch {
            bootargs: Some("a b".into()),
            initrd: None,
        },
    )
    .unwrap();
    let d = dump(&out);
    assert_eq!(d["/chosen"]["bootargs"], strs(&["a b"]));
    assert_eq!(d["/chosen"].len(), 1);
}

#[test]
fn our_own_tree_round_trips_unchanged() {
    let dtb = generate(&FdtConfig {
        ram_base: 0x8000_0000,
        ram_size: 128 << 20,
        ncpus: 2,
        bootargs: Some("x".into()),
        initrd: None,
        seed: vec![9; 64],
    })
    .unwrap();
    let out = patch(&parse(&dtb).unwrap(), &ChosenPatch::default()).unwrap();
    assert_eq!(dump(&out), dump(&dtb));
}

#[test]
fn bad_trees_are_refused() {
    let good = user_tree(true);
    assert!(parse(&good).is_ok());
    // Too large, by file or by header.
    assert_eq!(
        parse(&vec![0u8; DTB_MAX + 1]),
        Err(DtbError::TooLarge(DTB_MAX as u64 + 1))
    );
    let mut b = good.clone();
    b[4..8].copy_from_slice(&(3u32 << 20).to_be_bytes());
    assert_eq!(parse(&b), Err(DtbError::TooLarge(3 << 20)));
    // Bad magic, short file, truncated blob.
    let mut b = good.clone();
    b[0] = 0;
    assert_eq!(parse(&b), Err(DtbError::BadMagic));
    assert!(matches!(
        parse(&good[..20]),
        Err(DtbError::Truncated { .. })
    ));
    assert_eq!(
        parse(&good[..good.len() - 8]),
        Err(DtbError::Truncated {
            have: good.len() - 8,
            want: good.len()
        })
    );
    // Version 1.
    let mut b = good.clone();
    b[20..24].copy_from_slice(&1u32.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Version { .. })));
    // Structure block outside the blob, misaligned.
    let mut b = good.clone();
    b[36..40].copy_from_slice(&0x10_0000u32.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Malformed(_))));
    let mut b = good.clone();
    let off = header_u32(&b, 8) + 2;
    b[8..12].copy_from_slice(&off.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Malformed(_))));
    // A bad token in the structure block.
    let mut b = good.clone();
    let s = header_u32(&b, 8) as usize;
    b[s..s + 4].copy_from_slice(&0x77u32.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Malformed(_))));
    // An extra END_NODE closes more than was opened.
    let mut b = good.clone();
    let end = s + header_u32(&b, 36) as usize - 4; // the FDT_END token
    b[end..end + 4].copy_from_slice(&2u32.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Malformed(_))));
    // Property name offset past the strings block.
    let mut b = good.clone();
    // First property after the root's BEGIN_NODE (4 bytes token + 4 bytes "\0" padded).
    let nameoff = s + 8 + 8;
    b[nameoff..nameoff + 4].copy_from_slice(&0xffffu32.to_be_bytes());
    assert!(matches!(parse(&b), Err(DtbError::Malformed(_))));
}

/// Structure blocks cut inside a token, or whose lengths point past the block, are
/// refused as malformed, never a panic (the fuzz target found that fdt-rs asserted on
/// such a file).
#[test]
fn truncated_or_overlong_structure_is_refused() {
    let b = user_tree(true);
    let off_struct = header_u32(&b, 8) as usize;
    let size_struct = header_u32(&b, 36) as usize;
    // Every shorter structure-block size: the walk ends inside a token or before FDT_END.
    for cut in 4..size_struct {
        let mut t = b.clone();
        t[36..40].copy_from_slice(&(cut as u32).to_be_bytes());
        assert!(
            matches!(parse(&t), Err(DtbError::Malformed(_))),
            "size_struct {cut} of {size_struct}"
        );
    }
    // A property whose length runs past the block (the first FDT_PROP after the root).
    let mut t = b.clone();
    let prop = (off_struct..off_struct + size_struct)
        .step_by(4)
        .find(|&o| header_u32(&b, o) == 3)
        .unwrap();
    t[prop + 4..prop + 8].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
    assert!(matches!(parse(&t), Err(DtbError::Malformed(_))));
    // An unknown token.
    let mut t = b.clone();
    t[prop..prop + 4].copy_from_slice(&7u32.to_be_bytes());
    assert!(matches!(parse(&t), Err(DtbError::Malformed(_))));
}

/// A 31-byte node name (the specification's longest; fdt-rs refused anything above 30).
#[test]
fn long_node_names_parse() {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    let n = w.begin_node("node-name-of-31-bytes@123456789").unwrap();
    w.property_u32("x", 1).unwrap();
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    let b = w.finish().unwrap();
    let t = parse(&b).unwrap();
    assert!(t
        .tokens
        .contains(&Token::Begin("node-name-of-31-bytes@123456789".into())));
}
