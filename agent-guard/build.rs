//! Builds the kernel programs (agent-guard-ebpf) with nightly + bpf-linker and leaves the
//! object in OUT_DIR, where src/ebpf.rs embeds it. `deploy/setup-build.sh` installs both.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).parent().expect("workspace root");
    let ebpf = root.join("agent-guard-ebpf");
    for dir in ["agent-guard-ebpf/src", "agent-guard-ebpf/Cargo.toml", "agent-guard-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let ebpf_dir = ebpf.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-guard-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nbuilding the eBPF programs needs nightly with rust-src and bpf-linker: \
             run deploy/setup-build.sh"
        )
    })
}
