//! What the testbed runs: its tests (each prints one `TEST <name> PASS|FAIL` line) and
//! its benchmarks.

pub mod bench;
pub mod el2_blob;
pub mod test_vm;
pub mod vmm;
