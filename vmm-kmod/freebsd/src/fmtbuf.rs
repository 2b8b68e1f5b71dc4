//! A fixed-size text buffer implementing `core::fmt::Write`, for the kernel log and the
//! panic message: formatting must not allocate (the allocator may be what failed) and
//! must not fail on long text, which is cut at the buffer's end instead.

use core::fmt;

/// `N` bytes of text; writes past the end are dropped and remembered as truncation.
pub struct FmtBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FmtBuf<N> {
    pub const fn new() -> Self {
        FmtBuf {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The text written so far (never more than `N` bytes, cut at a UTF-8 boundary).
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Whether some text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<const N: usize> Default for FmtBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for FmtBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // After a cut, later pieces would read as if they followed the cut text.
        if self.truncated {
            return Ok(());
        }
        let room = N.saturating_sub(self.len);
        let mut take = s.len().min(room);
        // Cut at a character boundary so the buffer stays valid UTF-8.
        while take > 0 && !s.is_char_boundary(take) {
            take = take.saturating_sub(1);
        }
        if take < s.len() {
            self.truncated = true;
        }
        let end = self.len.saturating_add(take);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.len..end), s.as_bytes().get(..take))
        {
            dst.copy_from_slice(src);
            self.len = end;
        }
        // Never report an error: a cut message is still worth printing.
        Ok(())
    }
}

#[cfg(test)]
// Test code: a panic here is a failed test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn keeps_what_fits() {
        let mut b = FmtBuf::<16>::new();
        let x = "x";
        write!(b, "vmm: {} {x}", 1).unwrap();
        assert_eq!(b.as_bytes(), b"vmm: 1 x");
        assert!(!b.truncated());
    }

    #[test]
    fn cuts_long_text_at_a_char_boundary() {
        let mut b = FmtBuf::<8>::new();
        write!(b, "abcdefg\u{e9}zz").unwrap();
        // 'é' is two bytes and does not fit after 7 ASCII bytes.
        assert_eq!(b.as_bytes(), b"abcdefg");
        assert!(b.truncated());
        write!(b, "m").unwrap();
        assert_eq!(b.as_bytes(), b"abcdefg", "nothing after a cut");
    }

    #[test]
    fn empty_buffer_is_safe() {
        let mut b = FmtBuf::<0>::new();
        write!(b, "x").unwrap();
        assert!(b.as_bytes().is_empty());
        assert!(b.truncated());
    }
}
