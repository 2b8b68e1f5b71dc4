//! Numbers on the tools' command lines: memory sizes (`-m` of bhyveload and bhyve) and
//! guest physical addresses (bhyveload's `-b`, `-l`). One parser, so the two tools read
//! `-m` the same way (as FreeBSD's libvmmapi `vm_parse_memsize` does for both).

use thiserror::Error;

/// Why a number on the command line is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NumberError {
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("'{0}' has an unknown suffix (use K, M, G or T)")]
    BadSuffix(String),
    #[error("'{0}' is too large")]
    Overflow(String),
}

/// Splits `v` into its digits (decimal, or hex after `0x`) and the multiplier its
/// suffix names (K, M, G, T in either case, powers of 1024). Returns the value and
/// whether a suffix was present.
fn parse_scaled(v: &str) -> Result<(u64, bool), NumberError> {
    let not_a_number = || NumberError::NotANumber(v.to_string());
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (v, 10),
    };
    // A hex number takes no suffix: its digits would swallow the letters.
    let (digits, shift) = if radix == 16 {
        (digits, None)
    } else {
        match digits.char_indices().last() {
            Some((0, c)) if c.is_ascii_alphabetic() => return Err(not_a_number()),
            Some((i, c)) if c.is_ascii_alphabetic() => {
                // "lots" is not a number with a bad suffix.
                if !digits[..i].bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_a_number());
                }
                let shift = match c.to_ascii_lowercase() {
                    'k' => 10,
                    'm' => 20,
                    'g' => 30,
                    't' => 40,
                    _ => return Err(NumberError::BadSuffix(v.to_string())),
                };
                (&digits[..i], Some(shift))
            }
            _ => (digits, None),
        }
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number());
    }
    let n = u64::from_str_radix(digits, radix).map_err(|_| NumberError::Overflow(v.to_string()))?;
    match shift {
        None => Ok((n, false)),
        Some(s) => n
            .checked_mul(1u64 << s)
            .map(|n| (n, true))
            .ok_or_else(|| NumberError::Overflow(v.to_string())),
    }
}

/// A memory size as bhyve(8) and FreeBSD's `vm_parse_memsize()` read it: a number with
/// an optional K/M/G/T suffix; a bare number below 1 MiB means MiB (so `-m 512` is
/// 512 MiB) and a bare number of 1 MiB or more means bytes (`-m 134217728`).
pub fn parse_memsize(v: &str) -> Result<u64, NumberError> {
    let (n, suffixed) = parse_scaled(v)?;
    if !suffixed && n < (1 << 20) {
        return n
            .checked_mul(1 << 20)
            .ok_or_else(|| NumberError::Overflow(v.to_string()));
    }
    Ok(n)
}

/// A guest physical address: decimal or `0x` hex, or a size with a suffix (`2G`).
pub fn parse_addr(v: &str) -> Result<u64, NumberError> {
    parse_scaled(v).map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memsizes() {
        assert_eq!(parse_memsize("128M"), Ok(128 << 20));
        assert_eq!(parse_memsize("128m"), Ok(128 << 20));
        assert_eq!(parse_memsize("1G"), Ok(1 << 30));
        assert_eq!(parse_memsize("1g"), Ok(1 << 30));
        assert_eq!(parse_memsize("512K"), Ok(512 << 10));
        assert_eq!(parse_memsize("2T"), Ok(2 << 40));
        assert_eq!(parse_memsize("134217728"), Ok(134_217_728));
        assert_eq!(parse_memsize("0x8000000"), Ok(0x800_0000));
        // vm_parse_memsize: a bare number below 1 MiB counts in MiB.
        assert_eq!(parse_memsize("256"), Ok(256 << 20));
        assert_eq!(parse_memsize("0"), Ok(0));
        assert_eq!(parse_memsize("0M"), Ok(0));
    }

    #[test]
    fn bad_memsizes() {
        assert!(matches!(parse_memsize(""), Err(NumberError::NotANumber(_))));
        assert!(matches!(
            parse_memsize("M"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("12X"),
            Err(NumberError::BadSuffix(_))
        ));
        assert!(matches!(
            parse_memsize("lots"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("1.5G"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("-1"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("1 G"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("0xZZ"),
            Err(NumberError::NotANumber(_))
        ));
        assert!(matches!(
            parse_memsize("99999999999999999999"),
            Err(NumberError::Overflow(_))
        ));
        assert!(matches!(
            parse_memsize("17179869184T"),
            Err(NumberError::Overflow(_))
        ));
        assert_eq!(
            parse_memsize("12X").unwrap_err().to_string(),
            "'12X' has an unknown suffix (use K, M, G or T)"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("0x80000000"), Ok(0x8000_0000));
        assert_eq!(parse_addr("0X80000000"), Ok(0x8000_0000));
        assert_eq!(parse_addr("2147483648"), Ok(0x8000_0000));
        assert_eq!(parse_addr("2G"), Ok(0x8000_0000));
        // Unlike a size, a small bare address stays in bytes.
        assert_eq!(parse_addr("4096"), Ok(4096));
        assert!(parse_addr("0x").is_err());
        assert!(parse_addr("0x1G").is_err());
        assert!(parse_addr("zz").is_err());
    }
}
