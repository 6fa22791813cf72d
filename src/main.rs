//! `gantry`: parse the command line, then hand over to `gantry::cli`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use clap::Parser;
use gantry::cli::{self, Cli, Command, exit};

/// mimalloc instead of glibc's malloc: a batch call decodes and encodes
/// hundreds of small strings and messages, and malloc/free were ~15% of the
/// server's time under AcquireBatch load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let code = match cli.command {
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Health(args) => run(cli::health(&args, &env)),
        Command::Bucket(args) => run(cli::bucket(&args, &env)),
        Command::Top(args) => run(cli::top(&args, &env)),
        Command::Serve(args) => match cli::load_config(&args, &env) {
            Ok(loaded) => run(cli::serve(loaded, cli::config_source(&args, &env))),
            Err(e) => {
                eprintln!("gantry: invalid configuration: {e}");
                exit::CONFIG
            }
        },
    };
    std::process::exit(code);
}

/// Runs one async entry point on a multi-threaded runtime.
fn run(future: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let code = runtime.block_on(future);
            // Dropping the runtime would wait for every blocking task, and
            // one stuck on a failed disk (a flush that never returns) would
            // keep the process alive after shutdown: give them a moment, then go.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Err(e) => {
            eprintln!("gantry: cannot start the async runtime: {e}");
            exit::FAILURE
        }
    }
}
