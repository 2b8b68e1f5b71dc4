//! The cache-maintenance arithmetic: line sizes from CTR_EL0, the lines a range covers.

use crate::cache::{line_sizes, lines};
use std::vec::Vec;

#[test]
fn line_sizes_read_dminline_and_iminline() {
    // Cortex-A57: DminLine 4 and IminLine 4 (64 bytes each).
    assert_eq!(line_sizes(0x8444_c004), (64, 64));
    assert_eq!(line_sizes(3 << 16 | 5), (32, 128));
}

#[test]
fn lines_cover_the_range_from_its_first_line() {
    let v: Vec<usize> = lines(0x1030, 0x60, 64).collect();
    assert_eq!(v, [0x1000, 0x1040, 0x1080]);
    assert_eq!(lines(0x1000, 0, 64).count(), 0);
    assert_eq!(lines(0x1000, 1, 64).collect::<Vec<_>>(), [0x1000]);
    // At the top of the address space the walk stops instead of wrapping.
    assert_eq!(lines(usize::MAX - 10, 100, 64).count(), 1);
}
