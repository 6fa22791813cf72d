//! Documentation that must not drift from the code.

use gantry::config::Config;

#[test]
fn configuration_doc_lists_every_key_its_default_and_its_variable() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for (key, default, env) in Config::documented_keys() {
        let leaf = key.rsplit('.').next().unwrap();
        let row = doc
            .lines()
            .find(|line| {
                line.starts_with(&format!("| `{leaf}`")) && line.contains(&format!("`{env}`"))
            })
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {key} ({env})"));
        let default = default.trim_matches('"');
        let shown = if default.is_empty() {
            "`\"\"`".to_string()
        } else {
            format!("`{default}`")
        };
        assert!(
            row.contains(&shown),
            "{key}: default {shown} not in row {row}"
        );
    }
}

#[test]
fn every_toml_example_in_the_docs_is_a_valid_configuration() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for doc in ["docs/configuration.md", "docs/operations.md", "README.md"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let body = block.split("```").next().unwrap();
            if let Err(e) = Config::load(
                Some((std::path::Path::new(doc), body)),
                &Default::default(),
                &Default::default(),
            ) {
                panic!("{doc}: example does not load: {e}\n{body}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no TOML examples found");
}
