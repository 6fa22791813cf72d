//! Valid SQL that the parser (sqlparser) does not know yet. Such a text is
//! not a parse error against the query: when it fails to parse and carries
//! one of these constructs, the construct is named as information
//! ("not analyzed: …"), and where dropping or narrowing it keeps what the
//! rules look at (a locking clause, `SYMMETRIC`, `GROUP BY DISTINCT`, a
//! window frame's `EXCLUDE`, adjacent string literals), the rest of the
//! statement is parsed without it and analyzed.

use super::dialect::Dialect;
use super::lexer::{Kind, Lexer, Token};

/// One construct found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Construct {
    /// What it is, as the finding names it.
    pub name: &'static str,
    /// Byte ranges of the text to drop so the parser accepts the rest;
    /// `None` when the statement cannot be analyzed without it.
    pub drop: Option<Vec<(usize, usize)>>,
}

/// A significant token with its byte range in the text.
struct Tok<'a> {
    token: Token<'a>,
    start: usize,
    end: usize,
}

impl Tok<'_> {
    fn is(&self, word: &str) -> bool {
        self.token.kind != Kind::Literal && self.token.text.eq_ignore_ascii_case(word)
    }

    fn is_string(&self) -> bool {
        self.token.kind == Kind::Literal && self.token.text.starts_with('\'')
    }
}

fn significant<'a>(sql: &'a str, dialect: Dialect) -> Vec<Tok<'a>> {
    let base = sql.as_ptr() as usize;
    Lexer::new(sql, dialect)
        .filter(|t| t.kind != Kind::Space)
        .map(|token| {
            let start = token.text.as_ptr() as usize - base;
            Tok {
                start,
                end: start + token.text.len(),
                token,
            }
        })
        .collect()
}

/// Whether `toks[i..]` starts with `words`.
fn at(toks: &[Tok<'_>], i: usize, words: &[&str]) -> bool {
    words
        .iter()
        .enumerate()
        .all(|(k, w)| toks.get(i + k).is_some_and(|t| t.is(w)))
}

/// The constructs in `sql`, in text order.
pub fn find(sql: &str, dialect: Dialect) -> Vec<Construct> {
    let toks = significant(sql, dialect);
    let mut found = Vec::new();
    let span = |from: usize, to: usize| (toks[from].start, toks[to].end);
    let mut i = 0;
    while i < toks.len() {
        let first = i == 0 || toks[i - 1].is(";");
        let (name, drop, skip) = if first && at(&toks, i, &["TABLE"]) {
            ("TABLE <name>", None, 1)
        } else if first && at(&toks, i, &["VACUUM"]) {
            ("VACUUM", None, 1)
        } else if first && at(&toks, i, &["DO"]) {
            ("DO $$ … $$", None, 1)
        } else if at(&toks, i, &["ROWS", "FROM", "("]) {
            ("ROWS FROM (…)", None, 3)
        } else if at(&toks, i, &["XMLELEMENT", "(", "NAME"]) {
            ("xmlelement(name …)", None, 3)
        } else if at(&toks, i, &["FOR", "NO", "KEY", "UPDATE"]) {
            // FOR UPDATE locks more, and reads the same.
            ("FOR NO KEY UPDATE", Some(vec![span(i + 1, i + 2)]), 4)
        } else if at(&toks, i, &["FOR", "KEY", "SHARE"]) {
            ("FOR KEY SHARE", Some(vec![span(i + 1, i + 1)]), 3)
        } else if at(&toks, i, &["LOCK", "IN", "SHARE", "MODE"]) {
            ("LOCK IN SHARE MODE", Some(vec![span(i, i + 3)]), 4)
        } else if at(&toks, i, &["GROUP", "BY", "DISTINCT"]) {
            ("GROUP BY DISTINCT", Some(vec![span(i + 2, i + 2)]), 3)
        } else if at(&toks, i, &["BETWEEN", "SYMMETRIC"]) {
            ("BETWEEN SYMMETRIC", Some(vec![span(i + 1, i + 1)]), 2)
        } else if at(&toks, i, &["EXCLUDE"])
            && ["TIES", "GROUP", "CURRENT", "NO"]
                .iter()
                .any(|w| toks.get(i + 1).is_some_and(|t| t.is(w)))
        {
            let end =
                if at(&toks, i + 1, &["CURRENT", "ROW"]) || at(&toks, i + 1, &["NO", "OTHERS"]) {
                    i + 2
                } else {
                    i + 1
                };
            (
                "window frame EXCLUDE",
                Some(vec![span(i, end)]),
                end - i + 1,
            )
        } else if toks[i].is_string() && toks.get(i + 1).is_some_and(Tok::is_string) {
            // 'a' 'b' is one literal, 'ab': keep the first piece.
            let mut last = i + 1;
            while toks.get(last + 1).is_some_and(Tok::is_string) {
                last += 1;
            }
            (
                "adjacent string literals",
                Some(vec![span(i + 1, last)]),
                last - i + 1,
            )
        } else {
            i += 1;
            continue;
        };
        found.push(Construct { name, drop });
        i += skip;
    }
    found
}

/// The text with every droppable construct taken out, when all of them
/// can be; `None` when one cannot.
pub fn without(sql: &str, constructs: &[Construct]) -> Option<String> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for c in constructs {
        ranges.extend(c.drop.as_ref()?);
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(sql.len());
    let mut from = 0;
    for (start, end) in ranges {
        if start < from {
            continue;
        }
        out.push_str(sql.get(from..start)?);
        out.push(' ');
        from = end;
    }
    out.push_str(sql.get(from..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str, d: Dialect) -> Vec<&'static str> {
        find(sql, d).into_iter().map(|c| c.name).collect()
    }

    #[test]
    fn constructs_are_found_and_the_droppable_ones_dropped() {
        let pg = Dialect::Postgres;
        let sql = "SELECT id FROM t WHERE x BETWEEN SYMMETRIC 5 AND 1 FOR NO KEY UPDATE";
        assert_eq!(
            names(sql, pg),
            vec!["BETWEEN SYMMETRIC", "FOR NO KEY UPDATE"]
        );
        let rest = without(sql, &find(sql, pg)).unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>().join(" "),
            "SELECT id FROM t WHERE x BETWEEN 5 AND 1 FOR UPDATE"
        );
        let sql = "SELECT 'a' 'b' 'c', x FROM t";
        let rest = without(sql, &find(sql, pg)).unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>().join(" "),
            "SELECT 'a' , x FROM t"
        );
        assert_eq!(names("TABLE t", pg), vec!["TABLE <name>"]);
        assert!(without("TABLE t", &find("TABLE t", pg)).is_none());
        assert!(names("SELECT 'a', 'b' FROM t FOR UPDATE", pg).is_empty());
        assert_eq!(
            names("SELECT id FROM t LOCK IN SHARE MODE", Dialect::Mysql),
            vec!["LOCK IN SHARE MODE"]
        );
    }
}
