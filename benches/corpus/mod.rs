//! The query corpus (`queries.sql`), shared by `benches/query.rs` and
//! `examples/fingerprint_agreement.rs`: statements are separated by a line
//! holding only `;;`, and `--` lines are comments.

pub fn queries() -> Vec<String> {
    include_str!("queries.sql")
        .split("\n;;\n")
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|q| !q.trim().is_empty())
        .collect()
}
