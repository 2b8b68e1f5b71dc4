//! vmm.ko embeds the EL2 blob built by `cargo xtask build-el2`; `cargo xtask
//! build-kmod` passes its path in VMM_EL2_BLOB.
fn main() {
    println!("cargo:rerun-if-env-changed=VMM_EL2_BLOB");
    if let Ok(path) = std::env::var("VMM_EL2_BLOB") {
        println!("cargo:rerun-if-changed={path}");
    }
}
