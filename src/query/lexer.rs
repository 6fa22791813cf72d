//! A SQL lexer for fingerprints and normalized text: byte-oriented, no
//! allocation, never fails. sqlparser's tokenizer (which Analyze's parse
//! uses) does more — locations, unescaping, a token per keyword kind — and
//! costs more than the whole fingerprint may (docs/benchmarks.md); this one
//! knows just what fingerprints need: where literals, parameters, comments,
//! quoted identifiers and operators begin and end, per dialect. Unterminated
//! strings and comments run to the end of the text.

use super::dialect::Dialect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A word (keyword or identifier), unquoted.
    Word,
    /// A quoted identifier; the text includes the quotes.
    Quoted,
    /// A number or a string of any kind.
    Literal,
    /// A bind parameter: `$1`, `?`, `?3`, `:name`.
    Parameter,
    /// Punctuation or an operator.
    Symbol,
    /// Whitespace or a comment (kept so the normalized text knows where spaces were).
    Space,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
}

/// Operators of more than one character, longest first.
const OPERATORS: [&str; 19] = [
    "->>", "#>>", "::", "<=", ">=", "<>", "!=", "||", "->", "#>", "<<", ">>", "@>", "<@", "&&",
    "==", ":=", "=>", "!~",
];

pub struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    dialect: Dialect,
}

impl<'a> Lexer<'a> {
    pub fn new(text: &'a str, dialect: Dialect) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            dialect,
        }
    }

    fn at(&self, offset: usize) -> u8 {
        self.bytes.get(self.pos + offset).copied().unwrap_or(0)
    }

    /// Advances past a quoted run that started at `self.pos` with `quote`;
    /// a doubled quote is an escaped quote; `backslash` escapes too.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            if backslash && b == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if b == quote {
                if self.at(0) == quote {
                    self.pos += 1;
                    continue;
                }
                return;
            }
        }
        self.pos = self.bytes.len();
    }

    /// `$tag$ … $tag$` (Postgres), the tag possibly empty.
    fn dollar_quoted(&mut self) -> bool {
        let rest = &self.bytes[self.pos + 1..];
        let Some(end) = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        else {
            return false;
        };
        if rest[end] != b'$' || rest.first().is_some_and(u8::is_ascii_digit) {
            return false;
        }
        let tag = &self.bytes[self.pos..self.pos + end + 2];
        let body = self.pos + tag.len();
        self.pos = match self.bytes[body..].windows(tag.len()).position(|w| w == tag) {
            Some(i) => body + i + tag.len(),
            None => self.bytes.len(),
        };
        true
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.pos < self.bytes.len() && f(self.bytes[self.pos]) {
            self.pos += 1;
        }
    }

    fn is_word_start(b: u8) -> bool {
        b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
    }

    fn is_word_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
    }

    fn next_kind(&mut self) -> Kind {
        let b = self.at(0);
        let next = self.at(1);
        let d = self.dialect;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                // Not `is_ascii_whitespace`: it leaves out the vertical tab
                // (0x0b), and a token that does not advance never ends.
                self.skip_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
                Kind::Space
            }
            b'-' if next == b'-' => {
                self.skip_while(|b| b != b'\n');
                Kind::Space
            }
            b'#' if d == Dialect::Mysql => {
                self.skip_while(|b| b != b'\n');
                Kind::Space
            }
            b'/' if next == b'*' => {
                // Postgres nests block comments; the others end at the first */.
                let nests = d == Dialect::Postgres;
                let mut depth = 0usize;
                while self.pos < self.bytes.len() {
                    if self.at(0) == b'/' && self.at(1) == b'*' {
                        depth += 1;
                        self.pos += 2;
                    } else if self.at(0) == b'*' && self.at(1) == b'/' {
                        self.pos += 2;
                        depth = depth.saturating_sub(1);
                        if depth == 0 || !nests {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
                self.pos = self.pos.min(self.bytes.len());
                Kind::Space
            }
            b'\'' => {
                self.skip_quoted(b'\'', d == Dialect::Mysql);
                Kind::Literal
            }
            b'"' if d == Dialect::Mysql => {
                self.skip_quoted(b'"', true);
                Kind::Literal
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                Kind::Quoted
            }
            b'`' if d != Dialect::Postgres => {
                self.skip_quoted(b'`', false);
                Kind::Quoted
            }
            b'[' if d == Dialect::Sqlite => {
                self.skip_while(|b| b != b']');
                self.pos = (self.pos + 1).min(self.bytes.len());
                Kind::Quoted
            }
            // E'…', N'…', X'…', B'…' and U&'…' strings.
            b'e' | b'E' | b'n' | b'N' | b'x' | b'X' | b'b' | b'B' if next == b'\'' => {
                self.pos += 1;
                self.skip_quoted(b'\'', matches!(b, b'e' | b'E') || d == Dialect::Mysql);
                Kind::Literal
            }
            b'u' | b'U' if next == b'&' && self.at(2) == b'\'' => {
                self.pos += 2;
                self.skip_quoted(b'\'', false);
                Kind::Literal
            }
            b'0' if matches!(next, b'x' | b'X') => {
                self.pos += 2;
                self.skip_while(|b| b.is_ascii_hexdigit());
                Kind::Literal
            }
            b'0'..=b'9' => {
                self.number();
                Kind::Literal
            }
            b'.' if next.is_ascii_digit() => {
                self.number();
                Kind::Literal
            }
            b'$' if next.is_ascii_digit() => {
                self.pos += 1;
                self.skip_while(|b| b.is_ascii_digit());
                Kind::Parameter
            }
            b'$' if d != Dialect::Mysql && self.dollar_quoted() => Kind::Literal,
            b'?' if !matches!(next, b'|' | b'&' | b'-' | b'#') => {
                self.pos += 1;
                self.skip_while(|b| b.is_ascii_digit());
                Kind::Parameter
            }
            b':' if next != b':'
                && next != b'='
                && Self::is_word_start(next)
                && d != Dialect::Postgres =>
            {
                self.pos += 1;
                self.skip_while(Self::is_word_byte);
                Kind::Parameter
            }
            b if Self::is_word_start(b) => {
                self.skip_while(Self::is_word_byte);
                // Keep a multi-byte character whole.
                while !self.text.is_char_boundary(self.pos) {
                    self.pos += 1;
                }
                Kind::Word
            }
            _ => {
                let rest = &self.bytes[self.pos..];
                let len = OPERATORS
                    .iter()
                    .find(|op| rest.starts_with(op.as_bytes()))
                    .map_or(1, |op| op.len());
                self.pos += len;
                while !self.text.is_char_boundary(self.pos) {
                    self.pos += 1;
                }
                Kind::Symbol
            }
        }
    }

    fn number(&mut self) {
        self.skip_while(|b| b.is_ascii_digit() || b == b'_');
        if self.at(0) == b'.' && self.at(1) != b'.' {
            self.pos += 1;
            self.skip_while(|b| b.is_ascii_digit() || b == b'_');
        }
        if matches!(self.at(0), b'e' | b'E')
            && (self.at(1).is_ascii_digit()
                || (matches!(self.at(1), b'+' | b'-') && self.at(2).is_ascii_digit()))
        {
            self.pos += 2;
            self.skip_while(|b| b.is_ascii_digit());
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let start = self.pos;
        let kind = self.next_kind();
        if self.pos <= start {
            // Every token moves on, whatever a branch did: at least one
            // whole character, so the lexer always ends.
            let width = self.text[start..].chars().next().map_or(1, char::len_utf8);
            self.pos = start + width;
        }
        let end = self.pos.min(self.bytes.len());
        // Every branch stops on a character boundary or at the end.
        let text = self.text.get(start..end).unwrap_or("");
        Some(Token { kind, text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fuzzing find (tests/e2e/fuzz.rs): a vertical tab made a token that
    /// did not advance, so fingerprinting it allocated until the OOM killer.
    #[test]
    fn a_vertical_tab_is_whitespace_and_every_input_ends() {
        for d in [
            Dialect::Generic,
            Dialect::Postgres,
            Dialect::Mysql,
            Dialect::Sqlite,
        ] {
            for sql in [
                "``\"\"''\"\"\u{b}",
                "\u{b}",
                "SELECT\u{b}1",
                "a\u{c}\u{b} b",
            ] {
                let tokens: Vec<Token<'_>> = Lexer::new(sql, d).take(1000).collect();
                assert!(tokens.len() < 20, "{d:?} {sql:?}: {} tokens", tokens.len());
                assert!(tokens.iter().all(|t| !t.text.is_empty()), "{d:?} {sql:?}");
            }
            assert_eq!(
                lex("SELECT\u{b}1", d),
                vec![(Kind::Word, "SELECT"), (Kind::Literal, "1")]
            );
        }
    }

    fn lex(sql: &str, d: Dialect) -> Vec<(Kind, &str)> {
        Lexer::new(sql, d)
            .filter(|t| t.kind != Kind::Space)
            .map(|t| (t.kind, t.text))
            .collect()
    }

    #[test]
    fn literals_parameters_and_quotes_per_dialect() {
        use Kind::*;
        assert_eq!(
            lex(
                "SELECT a::int, 'it''s', E'\\n', $1, $$x$$ FROM \"T\" WHERE b <> -1.5e3",
                Dialect::Postgres
            ),
            vec![
                (Word, "SELECT"),
                (Word, "a"),
                (Symbol, "::"),
                (Word, "int"),
                (Symbol, ","),
                (Literal, "'it''s'"),
                (Symbol, ","),
                (Literal, "E'\\n'"),
                (Symbol, ","),
                (Parameter, "$1"),
                (Symbol, ","),
                (Literal, "$$x$$"),
                (Word, "FROM"),
                (Quoted, "\"T\""),
                (Word, "WHERE"),
                (Word, "b"),
                (Symbol, "<>"),
                (Symbol, "-"),
                (Literal, "1.5e3"),
            ]
        );
        assert_eq!(
            lex(
                "SELECT `a`, \"s\\\"x\", 'q\\'r' # c\n FROM t WHERE x = ?",
                Dialect::Mysql
            ),
            vec![
                (Word, "SELECT"),
                (Quoted, "`a`"),
                (Symbol, ","),
                (Literal, "\"s\\\"x\""),
                (Symbol, ","),
                (Literal, "'q\\'r'"),
                (Word, "FROM"),
                (Word, "t"),
                (Word, "WHERE"),
                (Word, "x"),
                (Symbol, "="),
                (Parameter, "?"),
            ]
        );
        assert_eq!(
            lex(
                "SELECT [a b] FROM t WHERE x = :id AND y = ?2",
                Dialect::Sqlite
            ),
            vec![
                (Word, "SELECT"),
                (Quoted, "[a b]"),
                (Word, "FROM"),
                (Word, "t"),
                (Word, "WHERE"),
                (Word, "x"),
                (Symbol, "="),
                (Parameter, ":id"),
                (Word, "AND"),
                (Word, "y"),
                (Symbol, "="),
                (Parameter, "?2"),
            ]
        );
    }

    #[test]
    fn comments_nest_in_postgres_and_unterminated_runs_end_at_the_end() {
        assert_eq!(
            lex("a /* x /* y */ z */ b", Dialect::Postgres),
            vec![(Kind::Word, "a"), (Kind::Word, "b")]
        );
        assert_eq!(
            lex("a 'never closed", Dialect::Generic),
            vec![(Kind::Word, "a"), (Kind::Literal, "'never closed")]
        );
        assert_eq!(
            lex("a /* never closed", Dialect::Generic),
            vec![(Kind::Word, "a")]
        );
        assert_eq!(lex("é ü → x", Dialect::Generic).len(), 4);
    }
}
