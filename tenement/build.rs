//! Builds the eBPF object (tenement-ebpf) for bpfel-unknown-none and leaves it in OUT_DIR,
//! where `monitor` embeds it. Only with the `ebpf` feature; without it nothing is built and
//! the monitor reports the kernel counters as unavailable.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_EBPF");
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenement-ebpf");
    let root = root.to_str().expect("utf-8 path");
    let package = aya_build::Package {
        name: "tenement-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|err| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {err}\n\
             run `cargo xtask setup` (installs nightly with rust-src, and bpf-linker), \
             or build without kernel counters: `cargo build --no-default-features`"
        )
    })
}
