//! The arithmetic of the global allocator's over-aligned blocks (see `panic.rs`):
//! malloc(9) guarantees pointer alignment only, so a block aligned to more is carved
//! out of a larger one, with the original address saved in the word just below it.
//! Portable and unit-tested; the allocator itself only runs in the kernel.

/// The alignment malloc(9) always gives: a pointer.
pub const MALLOC_MIN_ALIGN: usize = 8;

/// Bytes to ask malloc(9) for a block of `size` bytes aligned to `align` (a power of
/// two above [`MALLOC_MIN_ALIGN`]): the block, the slack and the saved word.
pub fn over_alloc_size(size: usize, align: usize) -> Option<usize> {
    size.max(1).checked_add(align)
}

/// The aligned block inside the malloc(9) block at `raw` (8-aligned, of
/// [`over_alloc_size`] bytes): at least one word above `raw` (room for the saved
/// address) and at most `align` above, so `size` bytes fit before the end.
pub fn aligned_start(raw: usize, align: usize) -> Option<usize> {
    if !align.is_power_of_two() || align <= MALLOC_MIN_ALIGN || raw & (MALLOC_MIN_ALIGN - 1) != 0 {
        return None;
    }
    // Round raw + 1 up: strictly above raw, hence at least 8 above (both 8-aligned).
    let above = raw.checked_add(1)?;
    above
        .checked_add(align.wrapping_sub(1))
        .map(|v| v & !(align.wrapping_sub(1)))
}

#[cfg(test)]
// Test code: a panic here is a failed test.
#[allow(clippy::arithmetic_side_effects, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aligned_blocks_fit_with_their_saved_word() {
        for align in [16usize, 32, 64, 128, 4096, 1 << 16] {
            for raw in (0x1000usize..0x1000 + 2 * align).step_by(8) {
                for size in [1usize, 7, 8, 100, align, 3 * align + 5] {
                    let total = over_alloc_size(size, align).unwrap();
                    let p = aligned_start(raw, align).unwrap();
                    assert_eq!(p % align, 0, "aligned");
                    assert!(p - 8 >= raw, "room for the saved address");
                    assert!(p + size <= raw + total, "block inside the allocation");
                }
            }
        }
    }

    #[test]
    fn refuses_what_the_allocator_never_asks() {
        assert_eq!(aligned_start(0x1000, 8), None);
        assert_eq!(aligned_start(0x1000, 24), None);
        assert_eq!(aligned_start(0x1004, 16), None);
        assert_eq!(aligned_start(usize::MAX - 7, 16), None);
        assert_eq!(over_alloc_size(usize::MAX, 16), None);
        assert_eq!(over_alloc_size(0, 16), Some(17));
    }
}
