//! Fingerprints and normalized text from sqlparser's tokenizer, so they
//! exist for any text — text that does not parse included — and cost a
//! tokenization, not a parse (see docs/query-analysis.md).
//!
//! The fingerprint is xxh3-64 of a canonical token stream, written as 16 hex
//! digits. The stream drops whitespace and comments, writes unquoted words
//! in upper case, replaces every literal and bind parameter with `?` (a
//! unary minus included; TRUE, FALSE and a NULL that is a value too),
//! collapses an `IN (...)` list of literals to `IN (?)`, keeps one of a run of
//! identical `VALUES` rows, and drops a trailing semicolon. It changes only
//! with a new version of this algorithm, which the committed test vectors guard.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use super::dialect::Dialect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprinted {
    /// 16 lower-case hex digits.
    pub fingerprint: String,
    /// The text with literals replaced by placeholders, comments dropped,
    /// whitespace collapsed.
    pub normalized: String,
    /// False when the tokenizer refused the text and the fallback ran.
    pub tokenized: bool,
}

/// One token of the canonical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Canon {
    Literal,
    Text(String),
}

impl Canon {
    fn is(&self, text: &str) -> bool {
        matches!(self, Canon::Text(t) if t == text)
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
    )
}

fn unquoted_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(Word { keyword: k, quote_style: None, .. }) if *k == keyword)
}

/// Whether a token can end an operand (so a following minus is binary).
fn ends_operand(token: &Token) -> bool {
    match token {
        Token::Word(w) => w.quote_style.is_some() || w.keyword == Keyword::NoKeyword,
        Token::RParen | Token::RBracket => true,
        t => is_literal(t),
    }
}

fn canon_word(word: &Word, dialect: Dialect) -> String {
    match word.quote_style {
        None => word.value.to_uppercase(),
        // `"users"` is `users`; `"Users"` keeps its case and quotes where case matters.
        Some(_) if !dialect.quoted_identifiers_keep_case() => word.value.to_uppercase(),
        Some(_) if word.value == word.value.to_lowercase() => word.value.to_uppercase(),
        Some(_) => format!("\"{}\"", word.value),
    }
}

/// The significant tokens, each marked literal or not, with unary minus
/// signs of literals removed.
fn significant(tokens: &[Token]) -> Vec<(usize, bool)> {
    let mut out: Vec<(usize, bool)> = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        if matches!(token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let prev = out.last().map(|&(p, _)| &tokens[p]);
        let literal = is_literal(token)
            || unquoted_keyword(token, Keyword::TRUE)
            || unquoted_keyword(token, Keyword::FALSE)
            || (unquoted_keyword(token, Keyword::NULL)
                && !prev.is_some_and(|p| {
                    unquoted_keyword(p, Keyword::IS) || unquoted_keyword(p, Keyword::NOT)
                }));
        if literal
            && matches!(prev, Some(Token::Minus))
            && !out
                .len()
                .checked_sub(2)
                .is_some_and(|b| ends_operand(&tokens[out[b].0]))
        {
            out.pop();
        }
        out.push((i, literal));
    }
    if out
        .last()
        .is_some_and(|&(i, _)| tokens[i] == Token::SemiColon)
    {
        out.pop();
    }
    out
}

/// The matching closing parenthesis of the `(` at `open`, if any.
fn closing(stream: &[Canon], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in stream.iter().enumerate().skip(open) {
        if c.is("(") {
            depth += 1;
        } else if c.is(")") {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// `IN (?, ?, ?)` becomes `IN (?)`; a run of identical VALUES rows keeps one.
fn collapse_lists(stream: Vec<Canon>) -> Vec<Canon> {
    let mut out = Vec::with_capacity(stream.len());
    let mut i = 0;
    while i < stream.len() {
        let c = &stream[i];
        out.push(c.clone());
        i += 1;
        if c.is("IN") && stream.get(i).is_some_and(|c| c.is("(")) {
            if let Some(end) = closing(&stream, i) {
                let inner = &stream[i + 1..end];
                let only_literals = !inner.is_empty()
                    && inner.iter().enumerate().all(|(k, c)| {
                        if k % 2 == 0 {
                            *c == Canon::Literal
                        } else {
                            c.is(",")
                        }
                    });
                if only_literals && inner.len() % 2 == 1 {
                    out.extend([
                        Canon::Text("(".into()),
                        Canon::Literal,
                        Canon::Text(")".into()),
                    ]);
                    i = end + 1;
                }
            }
        } else if c.is("VALUES") && stream.get(i).is_some_and(|c| c.is("(")) {
            let Some(end) = closing(&stream, i) else {
                continue;
            };
            let first = &stream[i..=end];
            out.extend_from_slice(first);
            i = end + 1;
            while stream.get(i).is_some_and(|c| c.is(","))
                && stream.get(i + 1).is_some_and(|c| c.is("("))
            {
                let Some(next_end) = closing(&stream, i + 1) else {
                    break;
                };
                if &stream[i + 1..=next_end] != first {
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

pub fn fingerprint(sql: &str, dialect: Dialect) -> Fingerprinted {
    let Ok(tokens) = Tokenizer::new(dialect.sqlparser(), sql).tokenize() else {
        return fallback(sql, dialect);
    };
    let marks = significant(&tokens);

    let stream: Vec<Canon> = marks
        .iter()
        .map(|&(i, literal)| match (&tokens[i], literal) {
            (_, true) => Canon::Literal,
            (Token::Word(w), false) => Canon::Text(canon_word(w, dialect)),
            (t, false) => Canon::Text(t.to_string()),
        })
        .collect();
    let mut canonical = String::with_capacity(sql.len());
    for c in collapse_lists(stream) {
        if !canonical.is_empty() {
            canonical.push(' ');
        }
        match c {
            Canon::Literal => canonical.push('?'),
            Canon::Text(t) => canonical.push_str(&t),
        }
    }

    Fingerprinted {
        fingerprint: hash_hex(&canonical),
        normalized: normalized_text(&tokens, &marks, dialect),
        tokenized: true,
    }
}

/// The text as written, literals replaced, comments dropped, whitespace collapsed.
fn normalized_text(tokens: &[Token], marks: &[(usize, bool)], dialect: Dialect) -> String {
    let mut text = String::new();
    let mut placeholders = 0;
    let mut previous: Option<usize> = None;
    for &(i, literal) in marks {
        // Whitespace or a comment between two kept tokens becomes one space;
        // a removed unary minus is skipped with them.
        if let Some(p) = previous
            && tokens[p + 1..i]
                .iter()
                .any(|t| matches!(t, Token::Whitespace(_)))
        {
            text.push(' ');
        }
        previous = Some(i);
        let token = &tokens[i];
        let keeps_text = matches!(token, Token::Word(_)) && literal;
        if literal && !keeps_text {
            placeholders += 1;
            if dialect.numbered_placeholders() {
                text.push('$');
                text.push_str(&placeholders.to_string());
            } else {
                text.push('?');
            }
        } else {
            text.push_str(&token.to_string());
        }
    }
    text
}

/// For text the tokenizer refuses (an unterminated string, a stray
/// character): quoted runs and numbers become `?`, comments go, whitespace
/// collapses, words are compared in upper case.
fn fallback(sql: &str, dialect: Dialect) -> Fingerprinted {
    let mut normalized = String::with_capacity(sql.len());
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut space = false;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            space = true;
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
            space = true;
            continue;
        }
        if c.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if space && !normalized.is_empty() {
            normalized.push(' ');
        }
        space = false;
        if c == '\'' || (c == '"' && !dialect.quoted_identifiers_keep_case()) {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            i += 1;
            normalized.push('?');
            continue;
        }
        let starts_number = c.is_ascii_digit()
            && !normalized
                .chars()
                .last()
                .is_some_and(|p| p.is_alphanumeric() || p == '_');
        if starts_number {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            normalized.push('?');
            continue;
        }
        normalized.push(c);
        i += 1;
    }
    let canonical = normalized.to_uppercase();
    Fingerprinted {
        fingerprint: hash_hex(&format!("unparsed {canonical}")),
        normalized,
        tokenized: false,
    }
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
        assert!(my.tokenized);
        // TRUE and NULL stay as written in the text.
        let keep = fingerprint("UPDATE t SET a = NULL WHERE b = TRUE", Dialect::Generic);
        assert_eq!(keep.normalized, "UPDATE t SET a = NULL WHERE b = TRUE");
    }

    #[test]
    fn text_the_tokenizer_refuses_still_gets_a_masked_fingerprint() {
        let a = fingerprint("SELECT * FROM t WHERE a = 'unterminated", Dialect::Generic);
        assert!(!a.tokenized);
        assert_eq!(a.normalized, "SELECT * FROM t WHERE a = ?");
        let b = fingerprint("select * from t  where a = 'other", Dialect::Generic);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
    }

    /// Fingerprints are stable across releases: these values were
    /// committed when the algorithm was written and must never change (a
    /// change of algorithm is a new major version, documented in
    /// docs/query-analysis.md).
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
                "5b6d4b9d1181b3a1",
            ),
        ];
        for (sql, d, expected) in vectors {
            assert_eq!(fp(sql, d), expected, "{sql}");
        }
        // The first is xxh3-64 of its canonical token stream.
        assert_eq!(
            hash_hex("SELECT * FROM USERS WHERE ID = ?"),
            "1d30923a41123441"
        );
    }
}
