//! Host unit tests of the FreeBSD glue that need no kernel: the module declaration
//! macro, the list of kernel symbols vmm.ko imports and the per-CPU offsets it reads.
// Test code: a panic here is a test failure.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::panic
)]

mod module_macro;
mod pcpu;
mod symbols;

#[test]
fn default_max_guest_mem_keeps_a_reserve() {
    use crate::kern::default_max_guest_mem;
    // 1 GiB: 512 MiB kept back; 64 GiB: an eighth (8 GiB).
    assert_eq!(default_max_guest_mem(1 << 18), 512 << 20);
    assert_eq!(default_max_guest_mem(16 << 20), 56 << 30);
    // Less than the reserve: nothing for guests, not an underflow.
    assert_eq!(default_max_guest_mem(1 << 16), 0);
}
