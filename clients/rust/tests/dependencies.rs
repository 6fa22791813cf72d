//! A service that only calls gantry gets only client-side dependencies: the
//! load generator's (clap, hdrhistogram, rand, serde, envoy-types,
//! OpenTelemetry's protos) come with the `load` feature alone.

#[test]
fn without_the_load_feature_only_client_dependencies_are_required() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("the crate's manifest");
    let section = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] section");
    let mut required: Vec<&str> = section
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| !line.contains("optional = true"))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    required.sort();
    assert_eq!(
        required,
        vec![
            "prost",
            "prost-types",
            "thiserror",
            "tokio",
            "tonic",
            "tonic-prost"
        ]
    );
}
