//! Generates the gantry client from the repository's `proto/` (the same files
//! the server is built from), plus the peer interface used by benchmarks.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let roots = [Path::new("../../proto"), Path::new("proto-peers")];
    let mut compiler = protox::Compiler::new(roots)?;
    compiler.include_imports(true);
    for root in roots {
        println!("cargo:rerun-if-changed={}", root.display());
        let mut files = Vec::new();
        protos(root, &mut files)?;
        files.sort();
        for file in files {
            compiler.open_file(file.strip_prefix(root)?)?;
        }
    }
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
