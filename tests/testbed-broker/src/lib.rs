//! The testbed broker's library side: starting and stopping a served testbed
//! ([`launch`]), shared by `cargo xtask testbed` and the tests. The broker itself is
//! the `vmm-testbed-broker` binary (src/main.rs).

pub mod launch;
