//! Fingerprints and normalized text, from gantry's own lexer (`lexer.rs`),
//! so they exist for any text — text that does not parse included — and cost
//! a pass over the bytes, not a parse (see docs/query-analysis.md).
//!
//! The fingerprint is xxh3-64 of a canonical token stream, written as 16 hex
//! digits. The stream drops whitespace and comments, writes unquoted words
//! in upper case, replaces every literal and bind parameter with `?` (a
//! unary minus included; TRUE, FALSE and a NULL that is a value too),
//! collapses an `IN (...)` list of literals to `IN (?)`, keeps one of a run of
//! identical `VALUES` rows, and drops a trailing semicolon. It changes only
//! with a new version of this algorithm, which the committed test vectors guard.

use std::fmt::Write;

use super::dialect::Dialect;
use super::lexer::{Kind, Lexer, Token};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprinted {
    /// 16 lower-case hex digits.
    pub fingerprint: String,
    /// The text with literals replaced by placeholders, comments dropped,
    /// whitespace collapsed.
    pub normalized: String,
}

/// Words after which a minus starts an operand (so it is a sign).
const OPERAND_STARTERS: [&str; 27] = [
    "SELECT", "WHERE", "AND", "OR", "NOT", "WHEN", "THEN", "ELSE", "BY", "VALUES", "SET", "LIMIT",
    "OFFSET", "IN", "IS", "LIKE", "BETWEEN", "CASE", "ON", "AS", "DEFAULT", "INTERVAL", "RETURN",
    "HAVING", "DISTINCT", "ALL", "ANY",
];

/// One token of the canonical stream, borrowed from the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Canon<'a> {
    Literal,
    Word(&'a str),
    /// A quoted identifier's inside.
    Quoted(&'a str),
    Symbol(&'a str),
}

impl Canon<'_> {
    fn is(&self, text: &str) -> bool {
        match self {
            Canon::Word(w) | Canon::Symbol(w) => w.eq_ignore_ascii_case(text),
            _ => false,
        }
    }

    fn same(&self, other: &Canon<'_>) -> bool {
        match (self, other) {
            (Canon::Literal, Canon::Literal) => true,
            (Canon::Word(a), Canon::Word(b)) => a.eq_ignore_ascii_case(b),
            (Canon::Quoted(a), Canon::Quoted(b)) | (Canon::Symbol(a), Canon::Symbol(b)) => a == b,
            _ => false,
        }
    }

    fn write(&self, out: &mut String, dialect: Dialect) {
        match self {
            Canon::Literal => out.push('?'),
            Canon::Word(w) => push_upper(out, w),
            // `"users"` is `users`; `"Users"` keeps its case and quotes where case matters.
            Canon::Quoted(q)
                if dialect.quoted_identifiers_keep_case() && q.chars().any(char::is_uppercase) =>
            {
                out.push('"');
                out.push_str(q);
                out.push('"');
            }
            Canon::Quoted(q) => push_upper(out, q),
            Canon::Symbol("!=") => out.push_str("<>"),
            Canon::Symbol(s) => out.push_str(s),
        }
    }
}

fn push_upper(out: &mut String, text: &str) {
    if text.is_ascii() {
        out.extend(text.bytes().map(|b| char::from(b.to_ascii_uppercase())));
    } else {
        out.extend(text.chars().flat_map(char::to_uppercase));
    }
}

fn word_is(token: &Token<'_>, word: &str) -> bool {
    token.kind == Kind::Word && token.text.eq_ignore_ascii_case(word)
}

/// Whether a token can end an operand (so a following minus is binary).
fn ends_operand(token: &Token<'_>) -> bool {
    match token.kind {
        Kind::Word => !OPERAND_STARTERS
            .iter()
            .any(|k| token.text.eq_ignore_ascii_case(k)),
        Kind::Quoted | Kind::Literal | Kind::Parameter => true,
        Kind::Symbol => matches!(token.text, ")" | "]"),
        Kind::Space => false,
    }
}

/// Types whose parenthesised numbers are modifiers (`varchar(10)`,
/// `numeric(10, 2)`), part of the type and not values.
const TYPES_WITH_MODIFIERS: [&str; 20] = [
    "VARCHAR",
    "CHAR",
    "CHARACTER",
    "VARYING",
    "NCHAR",
    "NVARCHAR",
    "NUMERIC",
    "DECIMAL",
    "DEC",
    "FLOAT",
    "BIT",
    "VARBIT",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TIMETZ",
    "INTERVAL",
    "BINARY",
    "VARBINARY",
    "DATETIME2",
];

/// One significant token (an index into the tokens): whether it is a
/// literal, and whether that literal is a type modifier — masked in the
/// fingerprint like any literal (as pg_query does), but kept as written in
/// the normalized text, where `varchar($1)` would change the meaning.
#[derive(Debug, Clone, Copy)]
struct Mark {
    index: usize,
    literal: bool,
    type_modifier: bool,
}

/// `?` in Postgres is a placeholder only where a value goes; between an
/// operand and a string or a `$n` it is jsonb's key-exists operator
/// (`data ? 'k'`), which must not become a placeholder.
fn is_jsonb_operator(tokens: &[Token<'_>], i: usize, prev: Option<&Token<'_>>) -> bool {
    let next = tokens[i + 1..].iter().find(|t| t.kind != Kind::Space);
    tokens[i].text == "?"
        && prev.is_some_and(ends_operand)
        && next.is_some_and(|n| {
            n.kind == Kind::Parameter && n.text.starts_with('$')
                || n.kind == Kind::Literal && n.text.starts_with(['\'', 'E', 'e'])
        })
}

/// The significant tokens, each marked literal or not, with unary minus
/// signs of literals and a trailing semicolon removed.
fn significant(tokens: &[Token<'_>], dialect: Dialect) -> Vec<Mark> {
    let mut out: Vec<Mark> = Vec::with_capacity(tokens.len());
    // Inside the parentheses of a type's modifiers (`varchar(…)`).
    let mut in_modifiers = false;
    for (i, token) in tokens.iter().enumerate() {
        if token.kind == Kind::Space {
            continue;
        }
        let prev = out.last().map(|m| &tokens[m.index]);
        let before_prev = out.len().checked_sub(2).map(|b| &tokens[out[b].index]);
        if token.kind == Kind::Symbol && token.text == "(" {
            // A type where a type goes: after `::`, `AS`, or a column's name.
            in_modifiers = prev.is_some_and(|p| {
                p.kind == Kind::Word
                    && TYPES_WITH_MODIFIERS
                        .iter()
                        .any(|t| p.text.eq_ignore_ascii_case(t))
            }) && before_prev.is_some_and(|b| {
                b.text == "::"
                    || word_is(b, "AS")
                    || word_is(b, "CHARACTER")
                    || b.kind == Kind::Quoted
                    || (b.kind == Kind::Word && ends_operand(b))
            });
        } else if token.kind == Kind::Symbol && token.text == ")" {
            in_modifiers = false;
        }
        let operator = dialect == Dialect::Postgres
            && token.kind == Kind::Parameter
            && is_jsonb_operator(tokens, i, prev);
        let literal = (matches!(token.kind, Kind::Literal | Kind::Parameter) && !operator)
            || word_is(token, "TRUE")
            || word_is(token, "FALSE")
            || (word_is(token, "NULL")
                && !prev.is_some_and(|p| word_is(p, "IS") || word_is(p, "NOT")));
        let type_modifier = in_modifiers
            && token.kind == Kind::Literal
            && token.text.starts_with(|c: char| c.is_ascii_digit());
        if literal
            && prev.is_some_and(|p| p.kind == Kind::Symbol && p.text == "-")
            && !before_prev.is_some_and(ends_operand)
        {
            out.pop();
        }
        out.push(Mark {
            index: i,
            literal,
            type_modifier,
        });
    }
    if out
        .last()
        .is_some_and(|m| tokens[m.index].kind == Kind::Symbol && tokens[m.index].text == ";")
    {
        out.pop();
    }
    out
}

/// The matching closing parenthesis of the `(` at `open`, if any.
fn closing(stream: &[Canon<'_>], open: usize) -> Option<usize> {
    closing_of(stream, open, "(", ")")
}

/// The matching `close` of the `open` symbol at `at`, if any.
fn closing_of(stream: &[Canon<'_>], at: usize, open: &str, close: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in stream.iter().enumerate().skip(at) {
        if c.is(open) {
            depth += 1;
        } else if c.is(close) {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Where one element of a list of values that starts at `k` ends
/// (exclusive): a literal, possibly cast (`? :: BIGINT`, `? :: VARCHAR ( ? )`),
/// or, in the outer list only (`rows`), a parenthesised row of such
/// elements (`( ? , ? )`) — one level, so deeply nested input costs no
/// recursion.
fn element_end(stream: &[Canon<'_>], k: usize, rows: bool) -> Option<usize> {
    let mut end = match stream.get(k)? {
        Canon::Literal => k + 1,
        c if rows && c.is("(") => {
            let close = closing(stream, k)?;
            uniform_list(stream, k + 1, close, false)?;
            close + 1
        }
        _ => return None,
    };
    while stream.get(end).is_some_and(|c| c.is("::"))
        && matches!(stream.get(end + 1), Some(Canon::Word(_)))
    {
        end += 2;
        if stream.get(end).is_some_and(|c| c.is("(")) {
            end = closing(stream, end)? + 1;
        }
    }
    Some(end)
}

/// When `stream[start..end]` is a comma-separated list of values that all
/// have the first one's shape, where the first ends.
fn uniform_list(stream: &[Canon<'_>], start: usize, end: usize, rows: bool) -> Option<usize> {
    let first_end = element_end(stream, start, rows)?;
    if first_end > end {
        return None;
    }
    let first = &stream[start..first_end];
    let mut k = first_end;
    while k < end {
        if !stream[k].is(",") {
            return None;
        }
        let next = element_end(stream, k + 1, rows)?;
        if next > end || !same_run(&stream[k + 1..next], first) {
            return None;
        }
        k = next;
    }
    (k == end).then_some(first_end)
}

fn same_run(a: &[Canon<'_>], b: &[Canon<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

/// A list of values keeps its first element: `IN (?, ?, ?)` becomes
/// `IN (?)`, and so do lists of casts (`IN (? :: BIGINT, …)`), of rows
/// (`IN ((?, ?), (?, ?))`) and arrays (`ARRAY [?, ?]`, so `= ANY (ARRAY […])`
/// and `&& ARRAY […]` group whatever the length); a run of identical VALUES
/// rows keeps one.
fn collapse_lists<'a>(stream: &[Canon<'a>]) -> Vec<Canon<'a>> {
    let mut out = Vec::with_capacity(stream.len());
    let mut i = 0;
    while i < stream.len() {
        let c = stream[i];
        out.push(c);
        i += 1;
        let brackets = if c.is("IN") {
            Some(("(", ")"))
        } else if c.is("ARRAY") {
            Some(("[", "]"))
        } else {
            None
        };
        if let Some((open, close)) = brackets
            && stream.get(i).is_some_and(|c| c.is(open))
        {
            if let Some(end) = closing_of(stream, i, open, close)
                && let Some(first_end) = uniform_list(stream, i + 1, end, true)
            {
                out.extend_from_slice(&stream[i..first_end]);
                out.push(stream[end]);
                i = end + 1;
            }
        } else if c.is("VALUES") && stream.get(i).is_some_and(|c| c.is("(")) {
            let Some(end) = closing(stream, i) else {
                continue;
            };
            let first = &stream[i..=end];
            out.extend_from_slice(first);
            i = end + 1;
            while stream.get(i).is_some_and(|c| c.is(","))
                && stream.get(i + 1).is_some_and(|c| c.is("("))
            {
                let Some(next_end) = closing(stream, i + 1) else {
                    break;
                };
                if !same_run(&stream[i + 1..=next_end], first) {
                    break;
                }
                i = next_end + 1;
            }
        }
    }
    out
}

fn hash_hex(canonical: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canonical.as_bytes()))
}

/// A quoted identifier's inside, without its quotes.
fn unquote(text: &str) -> &str {
    let inner = text.get(1..).unwrap_or("");
    match text.as_bytes().first() {
        Some(q) => {
            let close = if *q == b'[' { b']' } else { *q };
            if inner.as_bytes().last() == Some(&close) {
                &inner[..inner.len() - 1]
            } else {
                inner
            }
        }
        None => "",
    }
}

pub fn fingerprint(sql: &str, dialect: Dialect) -> Fingerprinted {
    let tokens: Vec<Token<'_>> = Lexer::new(sql, dialect).collect();
    of_tokens(&tokens, dialect)
}

/// The fingerprint of a text from its lexer tokens (Analyze lexes once for
/// the fingerprint and the parse).
pub fn of_tokens(tokens: &[Token<'_>], dialect: Dialect) -> Fingerprinted {
    let marks = significant(tokens, dialect);
    let stream: Vec<Canon<'_>> = marks
        .iter()
        .map(|m| {
            let t = &tokens[m.index];
            match (t.kind, m.literal) {
                (_, true) => Canon::Literal,
                (Kind::Word, false) => Canon::Word(t.text),
                (Kind::Quoted, false) => Canon::Quoted(unquote(t.text)),
                _ => Canon::Symbol(t.text),
            }
        })
        .collect();
    let mut canonical = String::with_capacity(tokens.iter().map(|t| t.text.len()).sum());
    for c in collapse_lists(&stream) {
        if !canonical.is_empty() {
            canonical.push(' ');
        }
        c.write(&mut canonical, dialect);
    }
    Fingerprinted {
        fingerprint: hash_hex(&canonical),
        normalized: normalized_text(tokens, &marks, dialect),
    }
}

/// The text as written, literals replaced, comments dropped, whitespace collapsed.
fn normalized_text(tokens: &[Token<'_>], marks: &[Mark], dialect: Dialect) -> String {
    let mut text = String::with_capacity(tokens.iter().map(|t| t.text.len()).sum());
    let mut placeholders = 0u32;
    let mut previous: Option<usize> = None;
    for mark in marks {
        let (i, literal) = (mark.index, mark.literal && !mark.type_modifier);
        // Whitespace or a comment between two kept tokens becomes one space;
        // a removed unary minus goes with them.
        if let Some(p) = previous
            && tokens[p + 1..i].iter().any(|t| t.kind == Kind::Space)
        {
            text.push(' ');
        }
        previous = Some(i);
        let token = &tokens[i];
        // TRUE, FALSE and NULL stay as written.
        if literal && token.kind != Kind::Word {
            placeholders += 1;
            if dialect.numbered_placeholders() {
                let _ = write!(text, "${placeholders}");
            } else {
                text.push('?');
            }
        } else {
            text.push_str(token.text);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(sql: &str, d: Dialect) -> String {
        fingerprint(sql, d).fingerprint
    }

    fn same(d: Dialect, a: &str, b: &str) {
        assert_eq!(
            fp(a, d),
            fp(b, d),
            "{d:?}: expected the same fingerprint:\n  {a}\n  {b}"
        );
    }

    fn differ(d: Dialect, a: &str, b: &str) {
        assert_ne!(
            fp(a, d),
            fp(b, d),
            "{d:?}: expected different fingerprints:\n  {a}\n  {b}"
        );
    }

    const ALL: [Dialect; 4] = [
        Dialect::Generic,
        Dialect::Postgres,
        Dialect::Mysql,
        Dialect::Sqlite,
    ];

    #[test]
    fn literals_whitespace_case_comments_and_list_lengths_do_not_matter() {
        for d in ALL {
            same(
                d,
                "SELECT * FROM users WHERE id = 1",
                "select *\n  from USERS where ID=42",
            );
            same(
                d,
                "SELECT name FROM users WHERE email = 'a@b.c'",
                "SELECT name FROM users /* hi */ WHERE email = 'x' -- trailing",
            );
            same(
                d,
                "SELECT * FROM t WHERE a IN (1, 2, 3)",
                "SELECT * FROM t WHERE a IN (7)",
            );
            same(
                d,
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
                "INSERT INTO t (a, b) VALUES (9, 'q')",
            );
            same(
                d,
                "SELECT * FROM t WHERE a > -5",
                "SELECT * FROM t WHERE a > 5",
            );
            same(
                d,
                "SELECT * FROM t WHERE flag = TRUE",
                "SELECT * FROM t WHERE flag = false",
            );
            same(
                d,
                "SELECT * FROM t LIMIT 10 OFFSET 20;",
                "SELECT * FROM t LIMIT 50 OFFSET 0",
            );
            same(
                d,
                "UPDATE t SET a = NULL WHERE id = 3",
                "UPDATE t SET a = 4 WHERE id = 5",
            );
        }
    }

    #[test]
    fn bind_parameters_match_literals_and_each_other() {
        same(
            Dialect::Postgres,
            "SELECT * FROM t WHERE a = $1 AND b = $2",
            "SELECT * FROM t WHERE a = $7 AND b = $3",
        );
        same(
            Dialect::Postgres,
            "SELECT * FROM t WHERE a = $1",
            "SELECT * FROM t WHERE a = 10",
        );
        same(
            Dialect::Mysql,
            "SELECT * FROM t WHERE a = ? AND b IN (?, ?)",
            "SELECT * FROM t WHERE a = 1 AND b IN (2)",
        );
        same(
            Dialect::Sqlite,
            "SELECT * FROM t WHERE a = ?",
            "SELECT * FROM t WHERE a = 'x'",
        );
    }

    #[test]
    fn tables_columns_operators_and_structure_do_matter() {
        for d in ALL {
            differ(
                d,
                "SELECT * FROM users WHERE id = 1",
                "SELECT * FROM orders WHERE id = 1",
            );
            differ(d, "SELECT name FROM users", "SELECT email FROM users");
            differ(
                d,
                "SELECT * FROM t WHERE a = 1",
                "SELECT * FROM t WHERE a > 1",
            );
            differ(
                d,
                "SELECT * FROM t WHERE a = 1",
                "SELECT * FROM t WHERE a = 1 AND b = 2",
            );
            differ(
                d,
                "SELECT * FROM t WHERE a IS NULL",
                "SELECT * FROM t WHERE a IS NOT NULL",
            );
            differ(
                d,
                "SELECT * FROM t WHERE a - 1 > 0",
                "SELECT * FROM t WHERE a + 1 > 0",
            );
            differ(
                d,
                "SELECT * FROM t WHERE a IN (1, 2)",
                "SELECT * FROM t WHERE a IN (SELECT b FROM u)",
            );
            differ(d, "INSERT INTO t VALUES (1, 2)", "INSERT INTO t VALUES (1)");
        }
        // A binary minus is an operator, not a sign.
        differ(Dialect::Generic, "SELECT a - 1 FROM t", "SELECT a 1 FROM t");
    }

    #[test]
    fn quoted_identifiers_follow_the_dialect() {
        same(
            Dialect::Postgres,
            "SELECT * FROM \"users\"",
            "SELECT * FROM users",
        );
        differ(
            Dialect::Postgres,
            "SELECT * FROM \"Users\"",
            "SELECT * FROM users",
        );
        same(
            Dialect::Mysql,
            "SELECT * FROM `Users`",
            "SELECT * FROM users",
        );
        // MySQL reads double quotes as a string literal.
        same(
            Dialect::Mysql,
            "SELECT * FROM t WHERE a = \"x\"",
            "SELECT * FROM t WHERE a = 'y'",
        );
    }

    #[test]
    fn normalized_text_uses_the_dialects_placeholders() {
        let pg = fingerprint(
            "SELECT *  FROM t -- c\nWHERE a = 5 AND b = 'x' AND c = -2",
            Dialect::Postgres,
        );
        assert_eq!(
            pg.normalized,
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3"
        );
        let my = fingerprint("select * from t where a in (1, 2);", Dialect::Mysql);
        assert_eq!(my.normalized, "select * from t where a in (?, ?)");
        // TRUE and NULL stay as written in the text.
        let keep = fingerprint("UPDATE t SET a = NULL WHERE b = TRUE", Dialect::Generic);
        assert_eq!(keep.normalized, "UPDATE t SET a = NULL WHERE b = TRUE");
    }

    #[test]
    fn unterminated_strings_and_garbage_still_get_a_masked_fingerprint() {
        let a = fingerprint("SELECT * FROM t WHERE a = 'unterminated", Dialect::Generic);
        assert_eq!(a.normalized, "SELECT * FROM t WHERE a = ?");
        let b = fingerprint("select * from t  where a = 'other'", Dialect::Generic);
        assert_eq!(a.fingerprint, b.fingerprint);
        for garbage in ["", ";", "\u{0}\u{1}", "\"", "/*", "$$", "é→ü", "?|", "0x"] {
            assert_eq!(
                fingerprint(garbage, Dialect::Postgres).fingerprint.len(),
                16,
                "{garbage:?}"
            );
        }
    }

    /// Fingerprints are stable across releases: these values were
    /// committed when the algorithm was written and must never change (a
    /// change of algorithm is a new major version, documented in
    /// docs/query-analysis.md).
    #[test]
    fn lists_of_casts_rows_and_arrays_group_whatever_their_length() {
        let pg = Dialect::Postgres;
        let t = |tail: &str| format!("SELECT * FROM t WHERE {tail}");
        for (a, b) in [
            ("id = ANY(ARRAY[1,2,3])", "id = ANY(ARRAY[4])"),
            ("tags && ARRAY['a','b']", "tags && ARRAY['c']"),
            ("id IN ($1::bigint, $2::bigint)", "id IN ($1::bigint)"),
            ("(a, b) IN ((1, 2), (3, 4))", "(a, b) IN ((5, 6))"),
            ("id IN (1, 2, 3)", "id IN (4)"),
        ] {
            same(pg, &t(a), &t(b));
        }
        for (a, b) in [
            ("id IN ($1::bigint)", "id IN ($1::text)"),
            ("(a, b) IN ((1, 2))", "(a, b) IN ((1, 2, 3))"),
            ("id IN (1, x)", "id IN (1)"),
            ("id = ANY(ARRAY[1])", "id = ANY(ARRAY[x])"),
        ] {
            differ(pg, &t(a), &t(b));
        }
        // Lists of different shapes are kept whole.
        differ(pg, &t("id IN (1, $1::int)"), &t("id IN (1)"));
    }

    #[test]
    fn jsonb_key_operators_are_not_placeholders() {
        let pg = Dialect::Postgres;
        let a = fingerprint("SELECT * FROM docs WHERE data ? 'k' AND id = $1", pg);
        assert_eq!(
            a.normalized,
            "SELECT * FROM docs WHERE data ? $1 AND id = $2"
        );
        same(
            pg,
            "SELECT * FROM docs WHERE data ? 'k'",
            "SELECT * FROM docs WHERE data ? 'other'",
        );
        differ(
            pg,
            "SELECT * FROM docs WHERE data ? 'k'",
            "SELECT * FROM docs WHERE data = 'k'",
        );
        assert_eq!(
            fingerprint("SELECT * FROM docs WHERE data ? $1", pg).normalized,
            "SELECT * FROM docs WHERE data ? $1"
        );
        // Where a value goes, `?` is still a placeholder (JDBC-style text).
        assert_eq!(
            fingerprint("SELECT * FROM t WHERE id = ? LIMIT ? OFFSET ?", pg).normalized,
            "SELECT * FROM t WHERE id = $1 LIMIT $2 OFFSET $3"
        );
        assert_eq!(
            fingerprint(
                "SELECT * FROM t WHERE a = ? AND b IN (?, ?)",
                Dialect::Mysql
            )
            .normalized,
            "SELECT * FROM t WHERE a = ? AND b IN (?, ?)"
        );
    }

    #[test]
    fn type_modifiers_stay_in_the_normalized_text() {
        let pg = Dialect::Postgres;
        let a = fingerprint(
            "SELECT x::varchar(10), CAST(y AS numeric(10, 2)), z::character varying(5) FROM t WHERE id = 7",
            pg,
        );
        assert_eq!(
            a.normalized,
            "SELECT x::varchar(10), CAST(y AS numeric(10, 2)), z::character varying(5) FROM t WHERE id = $1"
        );
        // The fingerprint masks them like any constant, as pg_query does.
        same(
            pg,
            "SELECT x::varchar(10) FROM t",
            "SELECT x::varchar(20) FROM t",
        );
        assert_eq!(
            fingerprint("CREATE TABLE t (name varchar(64), price decimal(8, 2))", pg).normalized,
            "CREATE TABLE t (name varchar(64), price decimal(8, 2))"
        );
        // A function that shares a type's name is not a type.
        assert_eq!(
            fingerprint("SELECT CHAR(65)", Dialect::Mysql).normalized,
            "SELECT CHAR(?)"
        );
    }

    /// `benches/corpus/groups.sql`: statements of one group share a
    /// fingerprint, different groups do not, and none is a parse error.
    #[test]
    fn the_corpus_groups_hold() {
        use std::collections::BTreeMap;
        let corpus = include_str!("../../benches/corpus/groups.sql");
        let mut groups: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for block in corpus.split("\n;;\n") {
            let mut group = None;
            let mut dialect = Dialect::Postgres;
            let mut sql = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("-- group: ") {
                    group = Some(name.trim().to_string());
                } else if let Some(name) = line.strip_prefix("-- dialect: ") {
                    dialect = Dialect::parse(name.trim()).unwrap();
                } else if !line.starts_with("--") {
                    sql.push(line);
                }
            }
            let Some(group) = group else { continue };
            let sql = sql.join("\n");
            let analysis = super::super::analyze::analyze(
                &sql,
                dialect,
                &super::super::rules::RuleSettings::default(),
            );
            assert!(
                analysis.findings.iter().all(|f| f.rule_id != "parse_error"),
                "{group}: {sql}: {:?}",
                analysis.findings
            );
            groups
                .entry(group)
                .or_default()
                .push((analysis.fingerprinted.fingerprint, sql));
        }
        assert!(groups.len() >= 20, "{} groups", groups.len());
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (group, members) in &groups {
            let first = &members[0].0;
            for (fp, sql) in members {
                assert_eq!(fp, first, "{group}: {sql} is not with {}", members[0].1);
            }
            if let Some(other) = owner.insert(first.clone(), group.clone()) {
                panic!("groups {other} and {group} share the fingerprint {first}");
            }
        }
    }

    #[test]
    fn committed_test_vectors() {
        let vectors = [
            (
                "SELECT * FROM users WHERE id = 1",
                Dialect::Postgres,
                "1d30923a41123441",
            ),
            (
                "insert into t (a) values (1), (2)",
                Dialect::Mysql,
                "bf0faa19224753d8",
            ),
            (
                "SELECT a FROM t WHERE b IN ($1, $2)",
                Dialect::Postgres,
                "585514d0c3d9e2f2",
            ),
            (
                "UPDATE accounts SET balance = balance - 10 WHERE id = ?",
                Dialect::Sqlite,
                "bbbe911e2115e709",
            ),
            (
                "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 100 ORDER BY o.created_at DESC LIMIT 20",
                Dialect::Generic,
                "2fc5757cb8336abf",
            ),
            (
                "SELECT * FROM t WHERE a = 'unterminated",
                Dialect::Generic,
                "fa40760a4d74ee21",
            ),
        ];
        for (sql, d, expected) in vectors {
            assert_eq!(fp(sql, d), expected, "{sql}");
        }
        // An unterminated string is a literal to the end: the same as a closed one.
        assert_eq!(
            fp("SELECT * FROM t WHERE a = 'x'", Dialect::Generic),
            "fa40760a4d74ee21"
        );
        // The first is xxh3-64 of its canonical token stream.
        assert_eq!(
            hash_hex("SELECT * FROM USERS WHERE ID = ?"),
            "1d30923a41123441"
        );
    }
}
