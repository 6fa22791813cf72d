//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no `protoc`
//! is needed) and generates the prost messages and tonic services. The encoded
//! descriptor set is written beside the code for the reflection service.
//!
//! Envoy's `rls.proto` is compiled into a second descriptor set, for
//! reflection only (its Rust types come from envoy-types): from the protos
//! that the envoy-types crate ships, found in cargo's registry. Where they
//! are not (a vendored build), the set is empty and reflection leaves the
//! service out; `cargo:warning` says so.

use std::path::{Path, PathBuf};

use prost::Message;

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("proto");
    // Rerun when any file or folder under proto/ changes (cargo walks directories).
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(proto_root, &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new([proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    for file in &files {
        let relative = file.strip_prefix(proto_root)?;
        compiler.open_file(relative)?;
    }
    let fds = compiler.file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("gantry_descriptor.bin"), fds.encode_to_vec())?;

    let envoy = envoy_descriptor_set().unwrap_or_else(|why| {
        println!("cargo:warning=Envoy's rate-limit service stays out of reflection: {why}");
        Vec::new()
    });
    std::fs::write(out_dir.join("envoy_rls_descriptor.bin"), envoy)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Cache values are handed from the hot tier to responses and watchers
        // without copying: `bytes::Bytes` instead of `Vec<u8>`.
        .bytes(".gantry.v1")
        .compile_fds(fds)?;
    Ok(())
}

/// The version of a package in Cargo.lock.
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let want = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == want {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_string());
        }
    }
    None
}

/// `envoy.service.ratelimit.v3` and everything it imports, encoded.
fn envoy_descriptor_set() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let lock = std::fs::read_to_string("Cargo.lock")?;
    println!("cargo:rerun-if-changed=Cargo.lock");
    let version = locked_version(&lock, "envoy-types").ok_or("envoy-types is not in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let crate_dir = std::fs::read_dir(cargo_home.join("registry").join("src"))?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("envoy-types-{version}")))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| format!("envoy-types-{version} is not in {}", cargo_home.display()))?;
    let protos = crate_dir.join("proto");
    let roots = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
    ]
    .map(|root| protos.join(root));
    let mut compiler = protox::Compiler::new(roots)?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_file("envoy/service/ratelimit/v3/rls.proto")?;
    Ok(compiler.file_descriptor_set().encode_to_vec())
}
