//! Links the testbed with its own script and tells cargo which prebuilt artifacts
//! (the EL2 blob, the guest programs) it embeds. `cargo xtask build-testbed` sets the
//! environment variables after building those.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
    for var in ["VMM_EL2_BLOB", "VMM_GUEST_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Ok(path) = std::env::var(var) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
