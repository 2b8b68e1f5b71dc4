//! Scalar typedefs of the FreeBSD 15.0 kernel on LP64 (`sys/sys/_types.h`,
//! `sys/arm64/include/_types.h`, `sys/vm/vm.h`, `sys/sys/time.h`).

/// `vm_paddr_t` (`machine/_types.h`: `__vm_paddr_t` is `__uint64_t` on arm64).
pub type VmPaddr = u64;
/// `vm_offset_t` (`__vm_offset_t`, `__uint64_t` on arm64).
pub type VmOffset = u64;
/// `vm_size_t` (`__vm_size_t`, `__uint64_t` on arm64).
pub type VmSize = u64;
/// `vm_ooffset_t` (`sys/_types.h`: `__int64_t`).
pub type VmOoffset = i64;
/// `vm_pindex_t` (`sys/_types.h`: `__uint64_t`).
pub type VmPindex = u64;
/// `vm_memattr_t` (`sys/vm/vm.h`: `typedef char vm_memattr_t`).
pub type VmMemattr = core::ffi::c_char;
/// `vm_prot_t` (`sys/vm/vm.h`: `typedef u_char vm_prot_t`).
pub type VmProt = u8;
/// `uid_t` / `gid_t` (`__uint32_t`).
pub type Uid = u32;
pub type Gid = u32;
/// `mode_t` (`sys/sys/_types.h`: `__uint16_t`).
pub type Mode = u16;
/// `sbintime_t` (`sys/sys/time.h`): signed 32.32 fixed-point seconds.
pub type Sbintime = i64;
/// `intmax_t` on LP64.
pub type Intmax = i64;

/// `SBT_1S` (`sys/sys/time.h`): one second as an `sbintime_t`.
pub const SBT_1S: Sbintime = 1 << 32;

/// Converts `ticks` of a counter running at `freq` Hz into an `sbintime_t`, saturating
/// at the largest representable value instead of overflowing (a far deadline then
/// simply means "about 68 years"). `freq == 0` yields 0 (no meaningful time).
pub fn ticks_to_sbt(ticks: u64, freq: u64) -> Sbintime {
    let (Some(secs), Some(rem)) = (ticks.checked_div(freq), ticks.checked_rem(freq)) else {
        return 0;
    };
    if secs >= u64::from(u32::MAX >> 1) {
        return Sbintime::MAX;
    }
    // rem < freq, so (rem << 32) / freq < 2^32: the fraction fits the low word.
    let frac = u128::from(rem)
        .checked_shl(32)
        .and_then(|v| v.checked_div(u128::from(freq)))
        .and_then(|f| u64::try_from(f).ok())
        .unwrap_or(0);
    let whole = secs.checked_shl(32).unwrap_or(0);
    i64::try_from(whole | frac).unwrap_or(Sbintime::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_sizes_match_lp64() {
        assert_eq!(core::mem::size_of::<VmPaddr>(), 8);
        assert_eq!(core::mem::size_of::<VmOoffset>(), 8);
        assert_eq!(core::mem::size_of::<Mode>(), 2);
        assert_eq!(core::mem::size_of::<core::ffi::c_long>(), 8);
        assert_eq!(core::mem::size_of::<*const u8>(), 8);
    }

    #[test]
    fn ticks_to_sbt_converts_and_saturates() {
        // 24 MHz counter: 24e6 ticks are one second, 12e6 half a second.
        assert_eq!(ticks_to_sbt(24_000_000, 24_000_000), SBT_1S);
        assert_eq!(ticks_to_sbt(12_000_000, 24_000_000), 1 << 31);
        assert_eq!(ticks_to_sbt(0, 24_000_000), 0);
        assert_eq!(ticks_to_sbt(u64::MAX, 1), Sbintime::MAX);
        assert_eq!(ticks_to_sbt(5, 0), 0);
    }
}
