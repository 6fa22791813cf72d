//! A real gantry for the client's tests: the server binary the workspace
//! builds (GANTRY_BIN, or target/debug/gantry), on 127.0.0.1 with its own
//! data; one the outage tests can SIGKILL and start again in place.
#![allow(dead_code)] // each test crate uses a part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The configuration every client's tests share.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/gantry.toml");

pub struct Server {
    child: Child,
    pub addr: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL: no shutdown, as a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address with the same data.
    pub fn restart(&mut self) {
        let (child, addr) = spawn(&self.addr, &self.dir.path().join("data"), &self.env);
        self.child = child;
        self.addr = addr;
    }
}

fn binary() -> Option<PathBuf> {
    // The workspace's target directory, wherever CARGO_TARGET_DIR puts it.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    let path = std::env::var_os("GANTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("debug/gantry"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("GANTRY_REQUIRE_CLIENT_TESTS").is_none(),
        "no gantry binary at {}",
        path.display()
    );
    eprintln!("SKIPPED: no gantry binary (cargo build -p gantry, or GANTRY_BIN)");
    None
}

pub fn start() -> Option<Server> {
    start_with(&[])
}

/// A gantry with extra environment (GANTRY_* keys).
pub fn start_with(env: &[(&str, String)]) -> Option<Server> {
    binary()?;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (child, addr) = spawn("127.0.0.1:0", &dir.path().join("data"), &env);
    Some(Server {
        child,
        addr,
        env,
        dir,
    })
}

fn spawn(listen: &str, data: &Path, env: &[(String, String)]) -> (Child, String) {
    let Some(bin) = binary() else {
        panic!("the gantry binary went away")
    };
    let mut child = Command::new(bin)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["serve", "--config", CONFIG, "--listen", listen])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("gantry listening grpc=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gantry did not start");
    (child, addr)
}
