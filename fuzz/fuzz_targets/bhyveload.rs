//! bhyveload's parsers and placement: a kernel file (Linux Image, ELF, gzip of either,
//! raw with -l) recognised and placed in RAM the command line allows, or a user
//! devicetree checked and re-emitted with /chosen patched. Invariants: nothing panics;
//! decompression stays under its limit; a placement keeps the kernel, every segment, the
//! entry, the initrd and the devicetree inside RAM and apart; a patched devicetree
//! parses again and carries the patch.
//!
//! Input: the file, then [`PARAMS`] bytes of parameters.
#![no_main]

use bhyveload::kernel;
use bhyveload::placement::{self, DTB_SLOT};
use bhyveload::userdtb::{self, ChosenPatch, Token};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn kernel_and_place(file: &[u8], u: &mut Unstructured<'_>) -> Result<()> {
    let ram_base = u64::from(u.int_in_range(0u32..=0x4000)?) << 21;
    let ram_size = u64::from(u.int_in_range(1u32..=2048)?) << 21;
    if vmm_platform::check_ram(ram_base, ram_size).is_err() {
        return Ok(());
    }
    let load_addr: Option<u64> = if u.arbitrary()? {
        Some(ram_base.wrapping_add(u64::from(u.arbitrary::<u32>()?) << 12))
    } else if u.ratio(1u8, 8)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let initrd_len: Option<u64> = if u.arbitrary()? {
        Some(u64::from(u.arbitrary::<u32>()?) % ram_size + 1)
    } else {
        None
    };
    let Ok(k) = kernel::load(file.to_vec(), load_addr.is_some(), ram_size) else {
        return Ok(());
    };
    assert!(k.bytes.len() as u64 <= ram_size.max(k.bytes.len() as u64));
    if k.gzipped {
        assert!(k.bytes.len() as u64 <= ram_size, "gunzip past its limit");
    }
    for s in &k.segments {
        assert!(
            s.file.start <= s.file.end && s.file.end <= k.bytes.len(),
            "{s:?} outside the file"
        );
        assert!(
            (s.file.end - s.file.start) as u64 <= s.memsz,
            "{s:?} larger in the file than in memory"
        );
    }
    let Ok(l) = placement::place(ram_base, ram_size, &k, load_addr, initrd_len) else {
        return Ok(());
    };
    let ram_end = ram_base + ram_size;
    assert_eq!((l.ram_base, l.ram_end), (ram_base, ram_end));
    assert!(
        ram_base <= l.kernel_start && l.kernel_start <= l.kernel_end,
        "{l:x?}"
    );
    assert!(
        l.kernel_end <= l.dtb && l.dtb + DTB_SLOT == ram_end,
        "{l:x?}"
    );
    assert!(
        l.entry >= l.load_base && l.entry < l.kernel_end.max(l.load_base + 1),
        "entry outside the kernel: {l:x?}"
    );
    for s in &k.segments {
        let start = l
            .load_base
            .checked_add(s.offset)
            .expect("segment address overflows");
        let end = start.checked_add(s.memsz).expect("segment end overflows");
        assert!(
            start >= l.kernel_start && end <= l.kernel_end,
            "{s:x?} outside {l:x?}"
        );
    }
    if let Some((start, end)) = l.initrd {
        assert_eq!(Some(end - start), initrd_len);
        assert!(
            start >= l.kernel_end && end <= l.dtb,
            "initrd {start:#x}..{end:#x} in {l:x?}"
        );
    } else {
        assert!(initrd_len.is_none(), "initrd placed nowhere");
    }
    Ok(())
}

fn devicetree(blob: &[u8], u: &mut Unstructured<'_>) -> Result<()> {
    let bootargs: Option<String> = if u.arbitrary()? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let initrd = if u.arbitrary()? {
        let s: u64 = u.arbitrary()?;
        Some((s, s.saturating_add(u64::from(u.arbitrary::<u32>()?))))
    } else {
        None
    };
    let Ok(tree) = userdtb::parse(blob) else {
        return Ok(());
    };
    let patch = ChosenPatch {
        bootargs: bootargs.clone(),
        initrd,
    };
    let Ok(out) = userdtb::patch(&tree, &patch) else {
        return Ok(());
    };
    let again = userdtb::parse(&out).expect("a patched devicetree does not parse");
    if let Some(args) = bootargs {
        let mut want = args.into_bytes();
        want.push(0);
        assert!(
            again
                .tokens
                .iter()
                .any(|t| matches!(t, Token::Prop(n, v) if n == "bootargs" && *v == want)),
            "bootargs missing after the patch"
        );
    }
    Ok(())
}

/// The input is the file (kernel, or a devicetree when it starts with the FDT magic)
/// followed by the parameters' bytes (RAM, -l, the initrd's size, the patch), so that
/// real files make seeds: fuzz/corpus/bhyveload.
const PARAMS: usize = 24;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.len().checked_sub(PARAMS) else {
        return;
    };
    let (file, params) = data.split_at(split);
    let mut u = Unstructured::new(params);
    let _ = if file.starts_with(&[0xd0, 0x0d, 0xfe, 0xed]) {
        devicetree(file, &mut u)
    } else {
        kernel_and_place(file, &mut u)
    };
});
