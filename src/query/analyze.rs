//! Analyze: fingerprint (from tokens), then a parse for the statement kind,
//! the tables and the rules. Text that does not parse keeps its fingerprint
//! and gets a `parse_error` finding; nothing is refused.

use std::collections::BTreeSet;

use sqlparser::ast::Statement;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::TokenWithSpan;

use super::dialect::Dialect;
use super::fingerprint::{self, Fingerprinted};
use super::lexer::Lexer;
use super::rules::{self, Finding, Findings, RuleSettings};
use super::tokens;
use super::unsupported;

/// Nesting deeper than this is refused by the parser (a `parse_error`),
/// so hostile input cannot exhaust the stack.
const RECURSION_LIMIT: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub fingerprinted: Fingerprinted,
    /// SELECT, INSERT, UPDATE, DELETE, DDL or OTHER.
    pub statement_kind: &'static str,
    /// Sorted, without duplicates, as written (unquoted names in lower case).
    pub tables: Vec<String>,
    pub findings: Vec<Finding>,
}

fn kind(statement: &Statement) -> &'static str {
    match statement {
        Statement::Query(_) => "SELECT",
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::CreateTable(_)
        | Statement::CreateIndex(_)
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateSequence { .. }
        | Statement::AlterTable(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::Drop { .. }
        | Statement::Truncate(_) => "DDL",
        _ => "OTHER",
    }
}

/// The kind from the first word, for text that does not parse.
fn kind_from_text(normalized: &str) -> &'static str {
    let first = normalized
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" => "SELECT",
        "INSERT" | "REPLACE" => "INSERT",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" => "DDL",
        _ => "OTHER",
    }
}

/// Parses `sql`, from sqlparser tokens made of the lexer's when they can be
/// (`tokens`: the same tokens, cheaper), else with sqlparser's tokenizer.
fn parse(
    sql: &str,
    tokens: Option<Vec<TokenWithSpan>>,
    dialect: Dialect,
) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    let parser = Parser::new(dialect.sqlparser()).with_recursion_limit(RECURSION_LIMIT);
    match tokens {
        Some(tokens) => parser.with_tokens_with_locations(tokens).parse_statements(),
        None => parser
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements()),
    }
}

pub fn analyze(sql: &str, dialect: Dialect, settings: &RuleSettings) -> Analysis {
    let lexed: Vec<_> = Lexer::new(sql, dialect).collect();
    let fingerprinted = fingerprint::of_tokens(&lexed, dialect);
    let tokens = tokens::from_lexed(&lexed, dialect);
    drop(lexed);
    let mut findings = Findings::new(settings);
    let (statement_kind, tables) = match parse(sql, tokens, dialect) {
        Ok(statements) => examine(&statements, &mut findings),
        Err(e) => {
            let constructs = unsupported::find(sql, dialect);
            if constructs.is_empty() {
                findings.add_parse_error(&e.to_string());
                (kind_from_text(&fingerprinted.normalized), Vec::new())
            } else {
                // Valid SQL the parser does not know: say so, and analyze
                // the rest when the constructs can be left out.
                let rest = unsupported::without(sql, &constructs)
                    .and_then(|rest| parse(&rest, None, dialect).ok());
                for c in &constructs {
                    findings.add_not_analyzed(c.name, rest.is_some());
                }
                match rest {
                    Some(statements) => examine(&statements, &mut findings),
                    None => (kind_from_text(&fingerprinted.normalized), Vec::new()),
                }
            }
        }
    };
    let mut findings = findings.found;
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule_id.cmp(b.rule_id)));
    Analysis {
        fingerprinted,
        statement_kind,
        tables,
        findings,
    }
}

/// Runs the rules over parsed statements; their kind and the tables they read.
fn examine(statements: &[Statement], findings: &mut Findings<'_>) -> (&'static str, Vec<String>) {
    match statements {
        [] => ("OTHER", Vec::new()),
        statements => {
            let mut ctes = BTreeSet::new();
            for statement in statements {
                findings.check(statement);
                if let Statement::Query(q) = statement
                    && let Some(with) = &q.with
                {
                    ctes.extend(
                        with.cte_tables
                            .iter()
                            .map(|c| c.alias.name.value.to_lowercase()),
                    );
                }
            }
            if statements.len() > 1 {
                findings.add(
                    rules::MULTIPLE_STATEMENTS,
                    format!("{} statements", statements.len()),
                );
            }
            let tables = findings
                .take_relations()
                .into_iter()
                .filter(|t| !ctes.contains(t))
                .collect();
            (kind(&statements[0]), tables)
        }
    }
}
