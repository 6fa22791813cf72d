//! `gantry-load`: see `gantry_client::load`.
#![forbid(unsafe_code)]

use std::time::Duration;

use clap::Parser;
use gantry_client::load::args::LoadArgs;

#[tokio::main]
async fn main() {
    let args = LoadArgs::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        match gantry_client::connect(&args.target, Duration::from_secs(10)).await {
            Ok(channel) => channels.push(channel),
            Err(e) => {
                eprintln!("gantry-load: {e}");
                std::process::exit(2);
            }
        }
    }
    let json = args.json;
    match gantry_client::load::runner::run(args, channels).await {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("gantry-load: {e}");
                        std::process::exit(1);
                    }
                }
            } else {
                print!("{}", report.table());
            }
        }
        Err(e) => {
            eprintln!("gantry-load: {e}");
            std::process::exit(1);
        }
    }
}
