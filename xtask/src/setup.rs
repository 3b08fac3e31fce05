//! Toolchain bootstrap for the eBPF build (see docs/ebpf.md) and the Debian packages the
//! tests use. Every step checks first and does nothing when it is already done.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::util::{self, output, run, step};

/// Debian packages the test suite and benchmarks start for real.
const APT_PACKAGES: &[&str] = &[
    "pebble",
    "runsc",
    "wrk",
    "nginx",
    // `cargo xtask bench proxy` compares tenement's proxy with HAProxy's.
    "haproxy",
    // perf(1), to profile the daemon under load (docs/benchmarks.md).
    "linux-perf",
    "bpftool",
    "tmux",
    "python3",
    // The socket-activated example app (examples/held-node).
    "nodejs",
    "openssl",
    "curl",
    "systemd",
    "prometheus",
    // `ip netns` and `nsenter` for the network boundary tests' own namespace.
    "iproute2",
    "util-linux",
    // RFC 2136 dynamic updates (tls_dns01 tests): named, tsig-keygen, dig.
    "bind9",
    "bind9-utils",
    "bind9-dnsutils",
    // mkfs.ext4 for the per-instance storage quota images.
    "e2fsprogs",
    // mount(8) and losetup(8): loop-mounting those images.
    "mount",
    // The dashboard's browser tests: headless Chromium driven through WebDriver.
    "chromium",
    "chromium-driver",
    // The fleet tests' 3-member etcd cluster (tenement talks to its JSON gateway: no protoc).
    "etcd-server",
];

pub fn setup(apt: bool) -> Result<()> {
    if apt {
        apt_packages()?;
    }
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    step("nightly toolchain with rust-src (builds the eBPF programs)");
    if output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_none() {
        // A fresh machine: the README's two commands install what they need themselves.
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "the nightly toolchain is missing and installing it failed: run `rustup toolchain \
             install nightly --component rust-src`, or build without eBPF: \
             `cargo build --no-default-features`",
        )?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must use the same LLVM as the rustc that emits the bitcode. Nightly rustc
/// ships its LLVM as a shared library; linking bpf-linker against that one keeps them in
/// step without any system LLVM (Debian's is too old for rustc's bitcode).
fn bpf_linker() -> Result<()> {
    step("bpf-linker built against nightly rustc's LLVM");
    let version = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot read nightly rustc's LLVM version")?
        .to_string();
    let prefix = cargo_home().join("tenement-llvm");
    let marker = prefix.join(format!("bpf-linker-llvm-{major}"));
    if marker.exists() && which("bpf-linker").is_some() {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot find nightly's sysroot")?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", libdir.display()))?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!("    cargo install bpf-linker (about two minutes, once)");
    run(Command::new(util::cargo_bin())
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    std::fs::write(&marker, "")?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    step("Debian packages used by the tests");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("    installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Builds tenement (whose build script compiles the eBPF object) and lists what is inside.
pub fn build_ebpf() -> Result<()> {
    setup(false)?;
    step("building the eBPF object");
    util::cargo(&["build", "--package", "tenement"])?;
    let object = newest_object().context("the build left no eBPF object behind")?;
    println!("{}", object.display());
    for line in object_listing(&object) {
        println!("  {line}");
    }
    Ok(())
}

/// "program NAME in SECTION" for every program and "map NAME" for every map of the object,
/// read from its symbol table: programs are functions in their own sections (helpers such as
/// memcpy live in .text), maps are objects in `.maps` (BTF) or `maps` (legacy).
fn object_listing(object: &std::path::Path) -> Vec<String> {
    let readelf = |flag: &str| {
        output(Command::new("readelf").args([flag, "--wide"]).arg(object)).unwrap_or_default()
    };
    let mut sections = std::collections::HashMap::new();
    for line in readelf("--sections").lines() {
        let Some((number, rest)) = line
            .trim_start()
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
        else {
            continue;
        };
        if let Some(name) = rest.split_whitespace().next() {
            sections.insert(number.trim().to_string(), name.to_string());
        }
    }
    let mut listing = Vec::new();
    for line in readelf("--syms").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 8 || fields[4] != "GLOBAL" {
            continue;
        }
        let section = sections.get(fields[6]).map(String::as_str).unwrap_or("");
        match (fields[3], section) {
            ("FUNC", ".text") => {}
            ("FUNC", _) => listing.push(format!("program {} in {section}", fields[7])),
            ("OBJECT", ".maps" | "maps") => listing.push(format!("map {}", fields[7])),
            _ => {}
        }
    }
    listing.sort();
    listing
}

fn newest_object() -> Option<PathBuf> {
    let build = util::workspace_root().join("target/debug/build");
    std::fs::read_dir(build)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("out/tenement"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
