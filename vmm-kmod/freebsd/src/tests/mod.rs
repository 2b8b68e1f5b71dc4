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
