//! Query analysis in process on a mixed corpus (OLTP statements and TPC-H
//! queries, `benches/corpus/queries.sql`): fingerprinting alone (what Record
//! does per execution) and the whole of Analyze (fingerprint, parse, rules).
//! Per-query cost; queries per second per core is its inverse.
//! Run: `cargo bench --bench query`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
mod corpus;

use gantry::query::analyze::analyze;
use gantry::query::dialect::Dialect;
use gantry::query::fingerprint::fingerprint;
use gantry::query::lexer::Lexer;
use gantry::query::rules::RuleSettings;
use gantry::query::tokens;

fn benches(c: &mut Criterion) {
    let queries = corpus::queries();
    let (oltp, olap): (Vec<&String>, Vec<&String>) = queries.iter().partition(|q| q.len() < 400);
    let settings = RuleSettings::default();
    for (name, set) in [
        ("mixed", queries.iter().collect::<Vec<_>>()),
        ("oltp", oltp),
        ("tpch", olap),
    ] {
        let mut group = c.benchmark_group(format!("query_{name}"));
        group.throughput(Throughput::Elements(set.len() as u64));
        group.bench_function("tokenize_only", |b| {
            b.iter(|| {
                for q in &set {
                    black_box(
                        sqlparser::tokenizer::Tokenizer::new(
                            &sqlparser::dialect::PostgreSqlDialect {},
                            q,
                        )
                        .tokenize()
                        .ok(),
                    );
                }
            })
        });
        group.bench_function("fingerprint", |b| {
            b.iter(|| {
                for q in &set {
                    black_box(fingerprint(q, Dialect::Postgres));
                }
            })
        });
        group.bench_function("analyze", |b| {
            b.iter(|| {
                for q in &set {
                    black_box(analyze(q, Dialect::Postgres, &settings));
                }
            })
        });
        group.finish();
    }

    // One new OLTP statement of about 150 bytes, the shape issue #21 item 7
    // measures over gRPC, split into its parts.
    let join = "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
                WHERE o.total > 100 AND o.status = 'paid' ORDER BY o.created_at DESC LIMIT 25";
    let mut group = c.benchmark_group("query_join150");
    group.bench_function("fingerprint", |b| {
        b.iter(|| black_box(fingerprint(black_box(join), Dialect::Postgres)))
    });
    group.bench_function("tokenize", |b| {
        b.iter(|| {
            black_box(
                sqlparser::tokenizer::Tokenizer::new(
                    &sqlparser::dialect::PostgreSqlDialect {},
                    black_box(join),
                )
                .tokenize_with_location()
                .ok(),
            )
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            black_box(
                sqlparser::parser::Parser::parse_sql(
                    &sqlparser::dialect::PostgreSqlDialect {},
                    black_box(join),
                )
                .ok(),
            )
        })
    });
    // The parser's share alone, given the tokens (what handing sqlparser
    // tokens made elsewhere could save at most).
    let tokens =
        sqlparser::tokenizer::Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, join)
            .tokenize_with_location()
            .unwrap_or_default();
    group.bench_function("parse_given_tokens", |b| {
        b.iter(|| {
            black_box(
                sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                    .with_tokens_with_locations(black_box(tokens.clone()))
                    .parse_statements()
                    .ok(),
            )
        })
    });
    // What Analyze does now: gantry's lexer (shared with the fingerprint),
    // its tokens converted for sqlparser, sqlparser's parser.
    group.bench_function("parse_from_lexer_tokens", |b| {
        b.iter(|| {
            let lexed: Vec<_> = Lexer::new(black_box(join), Dialect::Postgres).collect();
            let tokens = tokens::from_lexed(&lexed, Dialect::Postgres).unwrap_or_default();
            black_box(
                sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                    .with_tokens_with_locations(tokens)
                    .parse_statements()
                    .ok(),
            )
        })
    });
    group.bench_function("analyze", |b| {
        b.iter(|| black_box(analyze(black_box(join), Dialect::Postgres, &settings)))
    });
    group.finish();
}

criterion_group!(query, benches);
criterion_main!(query);
