//! `gantry-load`: see `gantry_client::load`.
#![forbid(unsafe_code)]

use clap::Parser;
use gantry_client::load::args::LoadArgs;
use gantry_client::load::runner;

#[tokio::main]
async fn main() {
    let args = LoadArgs::parse();
    let links = match runner::Links::connect(&args).await {
        Ok(links) => links,
        Err(e) => {
            eprintln!("gantry-load: {e}");
            std::process::exit(2);
        }
    };
    let json = args.json;
    match runner::run(args, links).await {
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
