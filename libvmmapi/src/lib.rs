//! libvmmapi: see the crate description. Being written.
