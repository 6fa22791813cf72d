//! The Go, TypeScript and Python clients' own test suites, run against this
//! build's gantry binary, so that `cargo test` runs every test of the
//! repository. Each needs its toolchain and dependencies (.ci/run installs
//! them: go, `npm ci`, and the Python client with its test extra in
//! .ci/venv); without them it says so and skips, unless
//! GANTRY_REQUIRE_CLIENT_TESTS is set.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn skip(what: &str) {
    assert!(
        std::env::var_os("GANTRY_REQUIRE_CLIENT_TESTS").is_none(),
        "GANTRY_REQUIRE_CLIENT_TESTS is set but {what}"
    );
    eprintln!("SKIPPED: {what} (run .ci/run)");
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs a client's command in `dir` with GANTRY_BIN set; asserts it succeeds.
fn run(dir: &Path, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .env("GANTRY_BIN", env!("CARGO_BIN_EXE_gantry"))
        .env("GANTRY_REQUIRE_CLIENT_TESTS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} in {} failed:\n{text}",
        program.display(),
        dir.display()
    );
    text
}

#[test]
fn the_go_client_is_formatted_vetted_and_passes_its_tests() {
    let (Some(go), Some(gofmt)) = (on_path("go"), on_path("gofmt")) else {
        return skip("go is not installed");
    };
    let dir = Path::new(ROOT).join("clients/go");
    let unformatted = run(&dir, &gofmt, &["-l", "."], &[]);
    assert!(unformatted.trim().is_empty(), "gofmt -l: {unformatted}");
    run(&dir, &go, &["vet", "./..."], &[]);
    let out = run(&dir, &go, &["test", "-count=1", "./..."], &[]);
    assert!(
        out.contains("ok  \tgithub.com/gantry/gantry/clients/go"),
        "{out}"
    );
}

#[test]
fn the_typescript_client_builds_and_passes_its_tests() {
    let dir = Path::new(ROOT).join("clients/typescript");
    let Some(npm) = on_path("npm").filter(|_| dir.join("node_modules").is_dir()) else {
        return skip("npm or clients/typescript/node_modules (npm ci) is missing");
    };
    let out = run(&dir, &npm, &["test"], &[]);
    assert!(
        out.contains("# fail 0") && out.contains("# skipped 0"),
        "{out}"
    );
}

#[test]
fn the_python_client_passes_its_tests() {
    let python = Path::new(ROOT).join(".ci/venv/bin/python");
    let installed = python.is_file()
        && Command::new(&python)
            .args(["-c", "import gantry, gantry.aio, pytest, pytest_asyncio"])
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        return skip(
            "the Python client is not installed in .ci/venv (pip install './clients/python[test]')",
        );
    }
    // The checkout's code, whatever version is installed: the install brings the dependencies.
    let src = Path::new(ROOT).join("clients/python/src");
    let out = run(
        Path::new(ROOT),
        &python,
        &["-m", "pytest", "-q", "clients/python/tests"],
        &[("PYTHONPATH", src.to_str().unwrap())],
    );
    // Every test ran and passed: no failure, none skipped (a skip would hide a
    // missing server binary), and at least the 28 there are now.
    let passed = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "passed")
        .and_then(|w| w[0].parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 28 && !out.contains(" failed") && !out.contains(" skipped"),
        "{out}"
    );
}
