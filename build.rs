//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no `protoc`
//! is needed) and generates the prost messages and tonic services. The encoded
//! descriptor set is written beside the code for the reflection service.

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

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Cache values are handed from the hot tier to responses and watchers
        // without copying: `bytes::Bytes` instead of `Vec<u8>`.
        .bytes(".gantry.v1")
        .compile_fds(fds)?;
    Ok(())
}
