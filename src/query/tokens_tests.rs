//! The conversion against sqlparser's own tokenizer: wherever it answers,
//! the same tokens with the same spans, on the corpus and on random text;
//! and the parse it feeds, the same statements or the same error.

use proptest::prelude::*;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Tokenizer;

use super::*;
use crate::query::lexer::Lexer;

const DIALECTS: [Dialect; 4] = [
    Dialect::Postgres,
    Dialect::Mysql,
    Dialect::Sqlite,
    Dialect::Generic,
];

fn converted(sql: &str, dialect: Dialect) -> Option<Vec<TokenWithSpan>> {
    let lexed: Vec<_> = Lexer::new(sql, dialect).collect();
    from_lexed(&lexed, dialect)
}

fn sqlparsers(sql: &str, dialect: Dialect) -> Option<Vec<TokenWithSpan>> {
    Tokenizer::new(dialect.sqlparser(), sql)
        .tokenize_with_location()
        .ok()
}

/// `TokenWithSpan`'s own equality ignores the span; this one does not.
fn same(ours: &[TokenWithSpan], theirs: &[TokenWithSpan]) -> bool {
    ours.len() == theirs.len()
        && ours
            .iter()
            .zip(theirs)
            .all(|(a, b)| a.token == b.token && a.span == b.span)
}

/// Checks one text in one dialect; whether the conversion answered.
fn check(sql: &str, dialect: Dialect) -> Result<bool, String> {
    let Some(ours) = converted(sql, dialect) else {
        return Ok(false);
    };
    match sqlparsers(sql, dialect) {
        Some(theirs) if same(&ours, &theirs) => Ok(true),
        Some(theirs) => Err(format!(
            "{dialect:?} {sql:?}\nours:   {ours:?}\ntheirs: {theirs:?}"
        )),
        None => Err(format!(
            "{dialect:?} {sql:?}: converted, but sqlparser's tokenizer refuses it"
        )),
    }
}

fn corpus() -> Vec<String> {
    let mut texts = Vec::new();
    for file in [
        include_str!("../../benches/corpus/queries.sql"),
        include_str!("../../benches/corpus/groups.sql"),
    ] {
        for block in file.split("\n;;\n") {
            let sql: Vec<&str> = block.lines().filter(|l| !l.starts_with("--")).collect();
            let sql = sql.join("\n");
            if !sql.trim().is_empty() {
                texts.push(sql);
            }
        }
    }
    texts
}

#[test]
fn every_keyword_is_found_in_any_case_and_other_words_are_not_keywords() {
    for word in ALL_KEYWORDS.iter().copied().chain(["users", "o", "x_1"]) {
        for variant in [word.to_string(), word.to_lowercase()] {
            let Token::Word(theirs) = Token::make_word(&variant, None) else {
                panic!("make_word made no word")
            };
            assert_eq!(keyword(&variant), theirs.keyword, "{variant}");
        }
    }
    assert_eq!(keyword(&"A".repeat(200)), Keyword::NoKeyword);
}

#[test]
fn the_corpus_converts_as_sqlparser_tokenizes() {
    let texts = corpus();
    let mut answered = 0;
    for sql in &texts {
        for dialect in DIALECTS {
            if check(sql, dialect).unwrap_or_else(|e| panic!("{e}")) && dialect == Dialect::Postgres
            {
                answered += 1;
            }
        }
    }
    // Most of the corpus is plain enough to convert (the rest has
    // comments, casts to arrays, jsonb operators, E'' strings …).
    assert!(answered * 2 > texts.len(), "{answered} of {}", texts.len());
}

#[test]
fn the_statement_issue_21_measures_converts() {
    let join = "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
                WHERE o.total > 100 AND o.status = 'paid' ORDER BY o.created_at DESC LIMIT 25";
    assert_eq!(check(join, Dialect::Postgres), Ok(true));
}

#[test]
fn what_it_does_not_make_exactly_is_left_to_sqlparser() {
    for (sql, dialect) in [
        ("SELECT 1 -- a comment", Dialect::Postgres),
        ("SELECT E'a\\nb'", Dialect::Postgres),
        ("SELECT 'it''s', 'a\\b'", Dialect::Mysql),
        ("SELECT a <=> b", Dialect::Mysql),
        ("SELECT data->>'k' FROM t", Dialect::Postgres),
        ("SELECT 1e5, .5, 0x1F", Dialect::Generic),
        ("SELECT \"a\"\"b\"", Dialect::Postgres),
        ("SELECT $$text$$", Dialect::Postgres),
        ("SELECT :name", Dialect::Sqlite),
        ("COPY t FROM STDIN;\n1\n\\.", Dialect::Postgres),
        ("SELECT 'Zürich'\r\n", Dialect::Postgres),
    ] {
        assert_eq!(converted(sql, dialect), None, "{dialect:?} {sql}");
    }
    // Doubled quotes, non-ASCII text and lines do convert, spans and all.
    for sql in [
        "SELECT 'it''s' AS \"Zürich\"",
        "SELECT name\n  FROM t\n WHERE city = 'Zürich'\n\tAND id = $1",
        "SELECT t.* FROM t WHERE a::text <> 'x' AND b >= 2.5",
    ] {
        assert_eq!(check(sql, Dialect::Postgres), Ok(true), "{sql}");
    }
}

/// The parse given the converted tokens: the same statements, or the same
/// error with the same line and column.
#[test]
fn the_parse_from_converted_tokens_is_sqlparsers() {
    let mut texts = corpus();
    texts.extend(
        [
            "SELECT FROM WHERE",
            "SELECT a FROM t WHERE (b = 1",
            "SELECT a,\n  b FROM t\n WHERE c = = 1",
            "UPDATE t SET a = 1 WHERE",
        ]
        .map(String::from),
    );
    for sql in &texts {
        for dialect in DIALECTS {
            let Some(tokens) = converted(sql, dialect) else {
                continue;
            };
            let ours = Parser::new(dialect.sqlparser())
                .with_tokens_with_locations(tokens)
                .parse_statements();
            let theirs = Parser::parse_sql(dialect.sqlparser(), sql);
            assert_eq!(
                format!("{ours:?}"),
                format!("{theirs:?}"),
                "{dialect:?} {sql}"
            );
        }
    }
}

/// Pieces random text is made of: what SQL holds, and what is near it.
fn piece() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "SELECT",
        "select",
        "FROM",
        "where",
        "AND",
        "or",
        "NOT",
        "IN",
        "is",
        "NULL",
        "limit",
        "ORDER",
        "BY",
        "join",
        "ON",
        "as",
        "COPY",
        "stdin",
        "date",
        "interval",
        "x",
        "o",
        "id",
        "_t",
        "u",
        "U",
        "e",
        "E",
        "n",
        "N",
        "b",
        "X",
        "t1",
        "a$b",
        "Zürich",
        "\"q\"",
        "\"\"",
        "\"a\"\"b\"",
        "`bt`",
        "[sq]",
        "'s'",
        "''",
        "'it''s'",
        "'a\\'b'",
        "'ünï'",
        "'",
        "\"",
        "1",
        "42",
        "3.14",
        "1.",
        ".5",
        "1e5",
        "1E-3",
        "0x1F",
        "1_000",
        "007",
        "$1",
        "$12",
        "$",
        "$$",
        "$tag$x$tag$",
        "?",
        "?1",
        ":name",
        ":",
        "::",
        "(",
        ")",
        ",",
        ".",
        ";",
        "*",
        "=",
        "==",
        "<",
        ">",
        "<=",
        ">=",
        "<>",
        "!=",
        "!",
        "<=>",
        "+",
        "-",
        "/",
        "%",
        "||",
        "|",
        "&",
        "&&",
        "^",
        "~",
        "~*",
        "!~",
        "@",
        "@>",
        "<@",
        "#",
        "#>",
        "->",
        "->>",
        "=>",
        "--",
        "/*",
        "*/",
        "[",
        "]",
        "{",
        "}",
        "\\",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "\u{b}",
    ]);
    prop_oneof![
        8 => fixed.prop_map(String::from),
        1 => "[a-z_][a-z0-9_]{0,6}",
        1 => "[0-9]{1,4}(\\.[0-9]{0,3})?",
        1 => "'[a-zé ]{0,4}'",
    ]
}

/// Pieces of the kinds the conversion makes, and a few that end it: most
/// texts of these convert, so their spans and neighbours get compared.
fn plain_piece() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "SELECT", "from", "WHERE", "and", "IN", "NULL", "LIMIT", "COPY", "x", "id", "\"q\"",
        "`bt`", "'s'", "'it''s'", "'ü'", "1", "3.14", "$1", "?", "::", "(", ")", ",", ".", ";",
        "*", "=", "<", ">", "<=", ">=", "<>", "!=", "+", "-", "/", "%", "|", "\n", "\t", "  ",
    ]);
    prop_oneof![
        6 => fixed.prop_map(String::from),
        1 => "[a-z_][a-z0-9_]{0,6}",
        1 => "[0-9]{1,4}(\\.[0-9]{1,3})?",
    ]
}

/// Pieces joined with or without a space between them.
fn text(piece: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((piece, prop::bool::ANY), 1..24).prop_map(|parts| {
        let mut text = String::new();
        for (part, spaced) in parts {
            text.push_str(&part);
            if spaced {
                text.push(' ');
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_text_converts_as_sqlparser_tokenizes(sql in text(piece())) {
        for dialect in DIALECTS {
            check(&sql, dialect).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn random_plain_text_converts_as_sqlparser_tokenizes(sql in text(plain_piece())) {
        for dialect in DIALECTS {
            check(&sql, dialect).map_err(TestCaseError::fail)?;
        }
    }
}
