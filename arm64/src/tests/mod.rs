//! Host unit tests of what does not need the CPU.
// Test code: a panic here is a test failure.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod cache;
