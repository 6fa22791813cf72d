//! gantry-load's two wires against a real gantry: the raw one (pre-encoded
//! requests on HTTP/2) answers as tonic's does — successes counted, and a
//! refused call counted under its gRPC code, whether the refusal comes as
//! trailers or as headers alone.
#![cfg(feature = "load")]

use std::time::Duration;

use clap::Parser;
use gantry_client::load::args::{LoadArgs, Wire};
use gantry_client::load::raw::Requests;
use gantry_client::load::report::Report;
use gantry_client::load::runner::{self, Links};

mod common;
use common::{Server, start};

fn wire_name(wire: Wire) -> &'static str {
    match wire {
        Wire::Tonic => "tonic",
        Wire::Raw => "raw",
    }
}

async fn run(server: &Server, wire: Wire, scenario: &str, name: &str) -> Report {
    let args = LoadArgs::parse_from([
        "gantry-load",
        "--scenario",
        scenario,
        "--target",
        &server.addr,
        "--name",
        name,
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--concurrency",
        "8",
        "--connections",
        "2",
        "--keys",
        "50",
        "--wire",
        wire_name(wire),
    ]);
    let links = Links::connect(&args).await.unwrap();
    runner::run(args, links).await.unwrap()
}

#[tokio::test]
async fn the_raw_wire_counts_answers_as_tonic_does() {
    let Some(server) = start() else { return };
    for wire in [Wire::Tonic, Wire::Raw] {
        for scenario in ["health", "envoy-rls"] {
            let report = run(&server, wire, scenario, "checkout").await;
            assert!(report.ok > 0, "{wire:?} {scenario}: nothing answered");
            assert!(
                report.errors.is_empty(),
                "{wire:?} {scenario}: {:?}",
                report.errors
            );
        }
        // An empty domain is refused: every call counted under its code.
        let refused = run(&server, wire, "envoy-rls", "").await;
        assert_eq!(refused.ok, 0, "{wire:?}");
        assert!(
            refused
                .errors
                .get("InvalidArgument")
                .is_some_and(|&n| n > 0)
                && refused.errors.len() == 1,
            "{wire:?}: {:?}",
            refused.errors
        );
    }
}

#[tokio::test]
async fn a_server_that_dies_mid_run_is_counted_unavailable_not_waited_for() {
    let Some(mut server) = start() else { return };
    for wire in [Wire::Tonic, Wire::Raw] {
        let args = LoadArgs::parse_from([
            "gantry-load",
            "--scenario",
            "envoy-rls",
            "--target",
            &server.addr,
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--concurrency",
            "4",
            "--wire",
            wire_name(wire),
        ]);
        let links = Links::connect(&args).await.unwrap();
        server.kill();
        let report = tokio::time::timeout(Duration::from_secs(20), runner::run(args, links))
            .await
            .unwrap_or_else(|_| panic!("{wire:?}: the run did not end"))
            .unwrap();
        assert_eq!(report.ok, 0, "{wire:?}");
        assert!(
            report.errors.get("Unavailable").is_some_and(|&n| n > 0),
            "{wire:?}: {:?}",
            report.errors
        );
        server.restart();
    }
}

#[test]
fn the_raw_wire_names_what_it_cannot_run() {
    let args = LoadArgs::parse_from(["gantry-load", "--scenario", "cache-put", "--wire", "raw"]);
    let err = Requests::for_scenario(&args).err().unwrap();
    assert!(err.contains("cache-put needs --wire tonic"), "{err}");
    let args = LoadArgs::parse_from([
        "gantry-load",
        "--scenario",
        "envoy-rls",
        "--wire",
        "raw",
        "--keys",
        "2000000",
    ]);
    let err = Requests::for_scenario(&args).err().unwrap();
    assert!(err.contains("at most 1000000 keys"), "{err}");
}
