//! The parsers never panic on damaged input: good files (an Image, an EFI Image, an ELF
//! kernel, our own devicetree) with bytes and header words overwritten at pseudo-random
//! places, thousands of times, must each give a result or an error. Deterministic (a
//! fixed-seed xorshift), so a failure names a case that reproduces.

use super::{elf, image, Seg};
use crate::fdt::{generate, FdtConfig};
use crate::kernel::load;
use crate::placement::place;
use crate::userdtb::{self, ChosenPatch};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `good` with a few bytes changed: mostly in the first 256 bytes (the headers), where
/// a change reaches the most code; sometimes a whole little-endian or big-endian word
/// set to an extreme; sometimes the file cut short.
fn damage(good: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.below(4) == 0 {
            b.len()
        } else {
            b.len().min(256)
        };
        let at = rng.below(span);
        match rng.below(4) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            _ => {
                let word: [u8; 8] = match rng.below(4) {
                    0 => [0xff; 8],
                    1 => [0; 8],
                    2 => (rng.next() >> rng.below(64)).to_le_bytes(),
                    _ => (rng.next() >> rng.below(64)).to_be_bytes(),
                };
                let at = at & !3;
                let n = (b.len() - at).min(if rng.below(2) == 0 { 4 } else { 8 });
                b[at..at + n].copy_from_slice(&word[..n]);
            }
        }
    }
    if rng.below(8) == 0 {
        let keep = rng.below(b.len() + 1);
        b.truncate(keep);
    }
    b
}

const RAM: u64 = 0x8000_0000;
const SIZE: u64 = 64 << 20;

#[test]
fn kernel_parsing_and_placement_never_panic() {
    let mut efi = image(0, 4 << 20, 2, 4096);
    efi[0x3c..0x40].copy_from_slice(&64u32.to_le_bytes());
    efi[64..68].copy_from_slice(b"PE\0\0");
    efi[68..70].copy_from_slice(&0xaa64u16.to_le_bytes());
    efi[70..72].copy_from_slice(&2u16.to_le_bytes());
    let kernel = elf(
        0xffff_0000_0020_0100,
        &[
            Seg {
                vaddr: 0xffff_0000_0020_0000,
                paddr: 0x20_0000,
                data: vec![1; 600],
                memsz: 0x2000,
            },
            Seg {
                vaddr: 0xffff_0000_0040_0000,
                paddr: 0x40_0000,
                data: vec![2; 100],
                memsz: 0x1000,
            },
        ],
    );
    let goods = [image(0x8_0000, 2 << 20, 2, 1024), efi, kernel];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut placed, mut refused) = (0, 0);
    for round in 0..6000 {
        let good = &goods[round % goods.len()];
        let bad = damage(good, &mut rng);
        let raw = round % 5 == 0;
        match load(bad, raw, SIZE) {
            Ok(k) => {
                let load_addr = raw.then_some(RAM + 0x1000);
                if place(RAM, SIZE, &k, load_addr, Some(1 << 20)).is_ok() {
                    placed += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    // The damage reaches both outcomes, so both paths were exercised.
    assert!(
        placed > 100 && refused > 100,
        "{placed} placed, {refused} refused"
    );
}

#[test]
fn devicetree_parsing_and_patching_never_panic() {
    let good = generate(&FdtConfig {
        ram_base: RAM,
        ram_size: SIZE,
        ncpus: 2,
        bootargs: Some("console=ttyAMA0".into()),
        initrd: Some((RAM + 0x100_0000, RAM + 0x200_0000)),
        seed: vec![7; 64],
    })
    .unwrap();
    let patch = ChosenPatch {
        bootargs: Some("root=/dev/vda".into()),
        initrd: Some((RAM + 0x300_0000, RAM + 0x300_1000)),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut patched, mut refused) = (0, 0);
    for _ in 0..6000 {
        let bad = damage(&good, &mut rng);
        match userdtb::parse(&bad) {
            Ok(tree) => {
                if userdtb::patch(&tree, &patch).is_ok() {
                    patched += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        patched > 100 && refused > 100,
        "{patched} patched, {refused} refused"
    );
}
