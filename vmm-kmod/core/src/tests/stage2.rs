//! Stage-2 tables over the fake physical memory, checked by the fake's own walker.

use crate::el2::{El2Config, S2Geometry};
use crate::fake::{FakeHost, PHYS_BASE};
use crate::host::Host;
use crate::stage2::{Perm, Stage2, BLOCK_2M};
use vmm_sys::arm64::regs::s2;
use vmm_sys::hyp;

const RWX: Perm = Perm {
    read: true,
    write: true,
    exec: true,
};

/// Checks every page of `[ipa, ipa+len)` translates to `pa + offset` through the
/// fake's independent walk, at the expected level, with RAM attributes and `perm`.
fn check_range(h: &FakeHost, s: &Stage2, ipa: u64, pa: u64, len: u64, perm: Perm, level: u32) {
    for off in (0..len).step_by(4096) {
        let (out, desc, lvl) = h
            .walk(s.vttbr(), ipa + off)
            .unwrap_or_else(|| panic!("IPA {:#x} not mapped", ipa + off));
        assert_eq!(out, pa + off, "IPA {:#x}", ipa + off);
        assert_eq!(lvl, level, "level of IPA {:#x}", ipa + off);
        assert_eq!(
            desc & (0xf << 2),
            s2::MEMATTR_NORMAL_WB,
            "normal write-back"
        );
        assert_eq!(desc & (3 << 8), s2::SH_IS, "inner shareable");
        assert_ne!(desc & s2::AF, 0, "access flag");
        assert_eq!(desc & s2::S2AP_R != 0, perm.read);
        assert_eq!(desc & s2::S2AP_W != 0, perm.write);
        assert_eq!(desc & s2::XN == 0, perm.exec);
        assert_eq!(desc & 2 != 0, level == 3, "page vs block descriptor");
        // The core's own walk agrees.
        let leaf = s.translate(h, ipa + off).unwrap();
        assert_eq!((leaf.pa, leaf.level), (pa + off, level));
    }
}

#[test]
fn blocks_where_aligned_pages_elsewhere() {
    let h = FakeHost::new(32, 1);
    let mut s = Stage2::new(&h, S2Geometry::new(39).unwrap(), 5).unwrap();
    assert_eq!(s.vttbr() >> 48, 5, "VMID in VTTBR");
    let chunk = h.alloc_contig(8 << 20, BLOCK_2M as usize).unwrap();
    // 4 MiB aligned on both sides, then 12 KiB: two blocks and three pages.
    s.map(&h, 0x8000_0000, chunk.pa, (4 << 20) + 0x3000, RWX)
        .unwrap();
    check_range(&h, &s, 0x8000_0000, chunk.pa, 4 << 20, RWX, 2);
    check_range(&h, &s, 0x8040_0000, chunk.pa + (4 << 20), 0x3000, RWX, 3);
    assert!(h.walk(s.vttbr(), 0x8040_3000).is_none());
    assert!(h.walk(s.vttbr(), 0x7fff_f000).is_none());
    // IPA aligned but PA not: pages only.
    let ro = Perm {
        read: true,
        write: false,
        exec: false,
    };
    s.map(&h, 0x1_0000_0000, chunk.pa + 0x1000, 2 << 20, ro)
        .unwrap();
    check_range(&h, &s, 0x1_0000_0000, chunk.pa + 0x1000, 2 << 20, ro, 3);
    // Unaligned requests and ranges past the IPA space are refused.
    assert!(s.map(&h, 0x8080_0800, chunk.pa, 4096, RWX).is_err());
    assert!(s.map(&h, (1 << 39) - 4096, chunk.pa, 8192, RWX).is_err());
    // Mapping over a block is refused rather than silently splitting it.
    assert!(s.map(&h, 0x8000_1000, chunk.pa, 4096, RWX).is_err());
}

#[test]
fn unmap_frees_every_table_and_invalidates() {
    let h = FakeHost::new(32, 1);
    let before = h.pages_in_use();
    let mut s = Stage2::new(&h, S2Geometry::new(39).unwrap(), 1).unwrap();
    let chunk = h.alloc_contig(4 << 20, BLOCK_2M as usize).unwrap();
    s.map(&h, 0x8000_0000, chunk.pa, 4 << 20, RWX).unwrap();
    s.map(&h, 0x40_0000_0000, chunk.pa + 0x5000, 0x2000, RWX)
        .unwrap();
    s.map(&h, 0x7f_ffe0_0000, chunk.pa, 0x20_0000, RWX).unwrap();
    assert!(s.table_pages() >= 4);
    h.tlbis.lock().unwrap().clear();
    s.unmap(&h, 0x40_0000_0000, 0x2000);
    assert!(h.walk(s.vttbr(), 0x40_0000_0000).is_none());
    {
        let t = h.tlbis.lock().unwrap();
        assert!(t
            .iter()
            .all(|t| t.func == hyp::HYP_S2_TLBI_RANGE && t.entry_was_clear));
        assert!(
            t.iter()
                .any(|t| !t.last_level && t.start <= 0x40_0000_0000 && t.end >= 0x40_0000_2000),
            "freed tables need a walk-cache invalidation: {t:?}"
        );
        assert!(t
            .iter()
            .any(|t| t.last_level && t.start == 0x40_0000_0000 && t.end == 0x40_0000_2000));
    }
    // The other mappings are untouched.
    check_range(&h, &s, 0x8000_0000, chunk.pa, 4 << 20, RWX, 2);
    s.unmap(&h, 0x8000_0000, 4 << 20);
    s.unmap(&h, 0x7f_ffe0_0000, 0x20_0000);
    assert_eq!(s.table_pages(), 0, "every table page returned");
    assert!(h.walk(s.vttbr(), 0x8000_0000).is_none());
    h.free_contig(chunk);
    s.destroy(&h);
    assert_eq!(h.pages_in_use(), before);
    assert!(h.el2_mapped.lock().unwrap().is_empty());
}

#[test]
fn remap_is_break_before_make() {
    let h = FakeHost::new(16, 1);
    let mut s = Stage2::new(&h, S2Geometry::new(39).unwrap(), 1).unwrap();
    let a = h.alloc_contig(4096, 4096).unwrap();
    let b = h.alloc_contig(4096, 4096).unwrap();
    s.map(&h, 0x8000_0000, a.pa, 4096, RWX).unwrap();
    h.tlbis.lock().unwrap().clear();
    s.map(&h, 0x8000_0000, b.pa, 4096, RWX).unwrap();
    let t = h.tlbis.lock().unwrap().clone();
    assert_eq!(t.len(), 1, "one invalidation between break and make");
    assert!(
        t[0].entry_was_clear,
        "the old entry was cleared before the TLBI"
    );
    assert_eq!((t[0].start, t[0].end), (0x8000_0000, 0x8000_1000));
    assert_eq!(h.walk(s.vttbr(), 0x8000_0000).unwrap().0, b.pa);
    s.destroy(&h);
}

#[test]
fn concatenated_root_tables() {
    for (bits, pages) in [(40u32, 2usize), (41, 4), (42, 8)] {
        let g = S2Geometry::new(bits).unwrap();
        assert_eq!((g.start_level, g.root_pages), (1, pages));
        let h = FakeHost::new(16, 1);
        *h.s2_walk.lock().unwrap() = (1, bits);
        let mut s = Stage2::new(&h, g, 2).unwrap();
        let root = s.vttbr() & s2::OA_MASK;
        assert_eq!(root % (pages as u64 * 4096), 0, "root aligned to its size");
        let p = h.alloc_contig(4096, 4096).unwrap();
        let top = (1u64 << bits) - 4096;
        s.map(&h, top, p.pa, 4096, RWX).unwrap();
        assert_eq!(h.walk(s.vttbr(), top).unwrap().0, p.pa);
        // The entry lives in the last of the concatenated tables.
        let last_entry = h.read_phys_u64(root + pages as u64 * 4096 - 8);
        assert_ne!(last_entry & 1, 0);
        assert!(s.map(&h, 1u64 << bits, p.pa, 4096, RWX).is_err());
        s.unmap(&h, top, 4096);
        assert_eq!(s.table_pages(), 0);
        s.destroy(&h);
    }
    let g = S2Geometry::new(44).unwrap();
    assert_eq!((g.start_level, g.root_pages), (0, 1));
    assert!(S2Geometry::new(31).is_err());
    assert!(S2Geometry::new(49).is_err());
}

#[test]
fn level0_start_for_wide_ipa() {
    let h = FakeHost::new(16, 1);
    *h.s2_walk.lock().unwrap() = (0, 48);
    let mut s = Stage2::new(&h, S2Geometry::new(48).unwrap(), 3).unwrap();
    let p = h
        .alloc_contig(BLOCK_2M as usize, BLOCK_2M as usize)
        .unwrap();
    s.map(&h, 0xffff_ffe0_0000, p.pa, BLOCK_2M, RWX).unwrap();
    assert_eq!(
        h.walk(s.vttbr(), 0xffff_ffe0_1234).unwrap(),
        (
            p.pa + 0x1234,
            h.walk(s.vttbr(), 0xffff_ffe0_0000).unwrap().1,
            2
        )
    );
    s.unmap(&h, 0xffff_ffe0_0000, BLOCK_2M);
    assert_eq!(s.table_pages(), 0);
    s.destroy(&h);
}

#[test]
fn vtcr_from_parange() {
    // Cortex-A57: PARange 4 (44 bits). Guest IPA 39 bits: T0SZ 25, start level 1.
    let c = El2Config::new(0x1124, 39).unwrap();
    assert_eq!(c.s2.ipa_bits, 39);
    assert_eq!(c.vtcr_el2 & 0x3f, 25, "T0SZ");
    assert_eq!((c.vtcr_el2 >> 6) & 3, 1, "SL0 = level 1");
    assert_eq!((c.vtcr_el2 >> 16) & 7, 4, "PS = 44 bits");
    assert_eq!((c.vtcr_el2 >> 14) & 3, 0, "4 KiB granule");
    assert_eq!((c.vtcr_el2 >> 12) & 3, 3, "inner shareable walks");
    assert_eq!((c.vtcr_el2 >> 8) & 0xf, 0b0101, "write-back walks");
    assert_ne!(c.vtcr_el2 & (1 << 31), 0, "RES1");
    assert_eq!(c.tcr_el2 & 0x3f, 16, "EL2 48-bit VA");
    assert_eq!((c.tcr_el2 >> 16) & 7, 4);
    assert_ne!(c.sctlr_el2 & 1, 0, "EL2 MMU on");
    assert_eq!(c.sctlr_el2 & (1 << 25), 0, "little-endian");
    // PARange 1 (36 bits): IPA shrinks to 36, still level 1.
    let c = El2Config::new(0x1, 39).unwrap();
    assert_eq!((c.s2.ipa_bits, c.vtcr_el2 & 0x3f), (36, 28));
    // 52-bit PA: PS capped at 48 bits.
    let c = El2Config::new(0x6, 39).unwrap();
    assert_eq!((c.vtcr_el2 >> 16) & 7, 5);
    // 32-bit PA hosts and reserved encodings are refused.
    assert!(El2Config::new(0x0, 39).is_err());
    assert!(El2Config::new(0xf, 39).is_err());
    let _ = PHYS_BASE;
}

#[test]
fn vmids_are_unique_and_recycled() {
    let mut a = crate::vmid::VmidAlloc::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..255 {
        let v = a.alloc().unwrap();
        assert_ne!(v, 0, "VMID 0 is the host's");
        assert!(seen.insert(v));
    }
    assert_eq!(a.alloc(), None);
    a.free(77);
    assert_eq!(a.alloc(), Some(77));
    assert_eq!(a.in_use(), 255);
}

/// Random non-overlapping maps and unmaps against a model: every page translates as the
/// model says after every step, blocks appear exactly where both sides are aligned, and
/// unmapping everything returns every table page.
#[test]
fn random_maps_match_a_model() {
    let h = FakeHost::new(48, 1);
    let mut s = Stage2::new(&h, S2Geometry::new(39).unwrap(), 9).unwrap();
    let pool = h.alloc_contig(16 << 20, BLOCK_2M as usize).unwrap();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // Live mappings: (ipa, pa, len).
    let mut live: Vec<(u64, u64, u64)> = Vec::new();
    for step in 0..200 {
        if !live.is_empty() && rnd(3) == 0 {
            let (ipa, _, len) = live.swap_remove(rnd(live.len() as u64) as usize);
            s.unmap(&h, ipa, len);
            for off in (0..len).step_by(4096) {
                assert!(h.walk(s.vttbr(), ipa + off).is_none(), "step {step}");
            }
        } else {
            // A slot of 8 MiB per possible mapping keeps them apart; inside it, a random
            // page offset and length (sometimes 2 MiB aligned, sometimes not).
            let slot = rnd(64);
            let ipa = 0x8000_0000 + slot * (8 << 20) + rnd(2) * (rnd(512) << 12);
            if live
                .iter()
                .any(|&(i, _, l)| ipa < i + l + (8 << 20) && i < ipa + (8 << 20))
            {
                continue;
            }
            let len = ((1 + rnd(1536)) << 12).min(6 << 20);
            let pa = pool.pa + if rnd(2) == 0 { 0 } else { rnd(512) << 12 };
            let len = len.min(pool.pa + (16 << 20) - pa);
            s.map(&h, ipa, pa, len, RWX).unwrap();
            live.push((ipa, pa, len));
        }
        for &(ipa, pa, len) in &live {
            let mut off = 0;
            while off < len {
                let (out, _, lvl) = h.walk(s.vttbr(), ipa + off).unwrap();
                assert_eq!(out, pa + off, "step {step}");
                let block_ok = (ipa + off) % BLOCK_2M == 0
                    && (pa + off) % BLOCK_2M == 0
                    && len - off >= BLOCK_2M;
                if block_ok {
                    assert_eq!(lvl, 2, "a block where both are aligned");
                    off += BLOCK_2M;
                } else {
                    assert_eq!(lvl, 3);
                    off += 4096;
                }
            }
        }
    }
    for (ipa, _, len) in live.drain(..) {
        s.unmap(&h, ipa, len);
    }
    assert_eq!(s.table_pages(), 0);
    h.free_contig(pool);
    s.destroy(&h);
    assert_eq!(h.pages_in_use(), 0);
}
