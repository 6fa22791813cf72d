//! sqlparser's tokens made from gantry's own lexer, for the parse Analyze
//! runs. sqlparser's tokenizer is about a third of a parse
//! (docs/benchmarks.md): it looks every word up among some 900 keywords by
//! binary search and walks the text a character at a time, where gantry's
//! lexer has already cut the same text for the fingerprint.
//!
//! The conversion is deliberately narrow: plain words, simply quoted
//! identifiers, unsigned decimal numbers, `'…'` strings without backslashes,
//! `$1`/`?` parameters, spaces, tabs and newlines, and the common
//! punctuation and comparison operators. Anything else — comments,
//! escapes, other literals and operators, a token sqlparser might join with
//! the one after it — makes it answer `None`, and the caller tokenizes with
//! sqlparser. Where it answers, its tokens and their spans are exactly
//! sqlparser's (`tests::*` compare them on the corpus and on random text),
//! so the parse, its errors and their line and column are unchanged.

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlparser::keywords::{ALL_KEYWORDS, ALL_KEYWORDS_INDEX, Keyword};
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Whitespace, Word};

use super::dialect::Dialect;
use super::lexer::{Kind, Token as Lexed};

/// Keywords by their upper-case text: one hash instead of a binary search.
static KEYWORDS: LazyLock<HashMap<&'static str, Keyword>> = LazyLock::new(|| {
    ALL_KEYWORDS
        .iter()
        .copied()
        .zip(ALL_KEYWORDS_INDEX.iter().copied())
        .collect()
});

/// The keyword an unquoted ASCII word is, as sqlparser's tokenizer decides
/// it (case-insensitively; `NoKeyword` for any other word).
fn keyword(word: &str) -> Keyword {
    // Longer than any keyword (a test finds every one through here).
    let mut upper = [0u8; 64];
    if word.len() > upper.len() {
        return Keyword::NoKeyword;
    }
    let upper = &mut upper[..word.len()];
    upper.copy_from_slice(word.as_bytes());
    upper.make_ascii_uppercase();
    std::str::from_utf8(upper)
        .ok()
        .and_then(|w| KEYWORDS.get(w).copied())
        .unwrap_or(Keyword::NoKeyword)
}

/// Where the next character is, as sqlparser counts: lines and columns
/// from 1, columns in characters, a newline starting the next line.
#[derive(Clone, Copy)]
struct Cursor {
    line: u64,
    column: u64,
}

impl Cursor {
    fn location(self) -> Location {
        Location::new(self.line, self.column)
    }

    /// Past `text`.
    fn advance(&mut self, text: &str) {
        if text.is_ascii() && !text.contains('\n') {
            self.column += text.len() as u64;
            return;
        }
        for c in text.chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_operator_byte(b: u8) -> bool {
    matches!(
        b,
        b'<' | b'>'
            | b'='
            | b'!'
            | b'~'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'*'
            | b'/'
            | b'+'
            | b'-'
            | b':'
            | b'?'
    )
}

/// Whether sqlparser might read `next` (the first byte of the token right
/// after, no space between) into the token `t` — a longer operator, a
/// number's fraction or exponent, a word's tail, a prefixed literal. The
/// conversion then stops: the lexer may cut such text differently.
fn extended_by(t: &Lexed<'_>, next: u8) -> bool {
    let quote_or_foreign = matches!(next, b'\'' | b'"' | b'`' | b'$') || next >= 0x80;
    match t.kind {
        Kind::Word => quote_or_foreign || is_word_byte(next) || matches!(next, b'&' | b'#' | b'@'),
        Kind::Literal | Kind::Quoted | Kind::Parameter => {
            quote_or_foreign || is_word_byte(next) || matches!(next, b'.' | b':' | b'?')
        }
        Kind::Symbol => match t.text {
            "(" | ")" | "," | ";" => false,
            "." => !(next.is_ascii_alphabetic() || next == b'*'),
            _ => is_operator_byte(next),
        },
        Kind::Space => false,
    }
}

/// A word: ASCII letters, digits and `_`, not starting with a digit.
fn word(text: &str) -> Option<Token> {
    let bytes = text.as_bytes();
    let first = *bytes.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_') || !bytes.iter().all(|&b| is_word_byte(b)) {
        return None;
    }
    Some(Token::Word(Word {
        value: text.to_string(),
        quote_style: None,
        keyword: keyword(text),
    }))
}

/// `"name"` (or `` `name` `` where the dialect quotes with it): no doubled
/// quote inside, not empty.
fn quoted(text: &str, dialect: Dialect) -> Option<Token> {
    let quote = *text.as_bytes().first()?;
    let allowed = match quote {
        b'"' => dialect != Dialect::Mysql,
        b'`' => matches!(dialect, Dialect::Mysql | Dialect::Sqlite | Dialect::Generic),
        _ => false,
    };
    let inner = text.get(1..text.len().checked_sub(1)?)?;
    if !allowed
        || text.len() < 3
        || text.as_bytes().last() != Some(&quote)
        || inner.bytes().any(|b| b == quote || b == b'\\')
    {
        return None;
    }
    Some(Token::Word(Word {
        value: inner.to_string(),
        quote_style: Some(char::from(quote)),
        keyword: Keyword::NoKeyword,
    }))
}

/// An unsigned decimal number (`42`, `3.14`), or a `'…'` string without
/// backslashes whose doubled quotes stand for one.
fn literal(text: &str) -> Option<Token> {
    let bytes = text.as_bytes();
    match bytes.first()? {
        b'0'..=b'9' => {
            let (whole, fraction) = match text.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (text, None),
            };
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(whole) && fraction.is_none_or(digits))
                .then(|| Token::Number(text.to_string(), false))
        }
        b'\'' => {
            let inner = text.get(1..text.len().checked_sub(1)?)?;
            if text.len() < 2 || bytes.last() != Some(&b'\'') || inner.contains('\\') {
                return None;
            }
            // Inside, quotes come in pairs (the lexer ended the string at
            // the first lone one).
            if inner.contains('\'') {
                let pairs = inner.split("''").all(|part| !part.contains('\''));
                pairs.then(|| Token::SingleQuotedString(inner.replace("''", "'")))
            } else {
                Some(Token::SingleQuotedString(inner.to_string()))
            }
        }
        _ => None,
    }
}

/// `$1` in Postgres and the generic dialect, `?` in the others.
fn parameter(text: &str, dialect: Dialect) -> Option<Token> {
    let numbered = text.len() > 1
        && text.starts_with('$')
        && text[1..].bytes().all(|b| b.is_ascii_digit())
        && matches!(dialect, Dialect::Postgres | Dialect::Generic);
    let question = text == "?" && dialect != Dialect::Postgres;
    (numbered || question).then(|| Token::Placeholder(text.to_string()))
}

fn symbol(text: &str) -> Option<Token> {
    Some(match text {
        "(" => Token::LParen,
        ")" => Token::RParen,
        "," => Token::Comma,
        "." => Token::Period,
        ";" => Token::SemiColon,
        "=" => Token::Eq,
        "<" => Token::Lt,
        ">" => Token::Gt,
        "<=" => Token::LtEq,
        ">=" => Token::GtEq,
        "<>" | "!=" => Token::Neq,
        "+" => Token::Plus,
        "-" => Token::Minus,
        "*" => Token::Mul,
        "/" => Token::Div,
        "::" => Token::DoubleColon,
        _ => return None,
    })
}

/// One whitespace token per space, tab or newline, as sqlparser makes them.
fn spaces(text: &str, at: &mut Cursor, out: &mut Vec<TokenWithSpan>) -> Option<()> {
    for b in text.bytes() {
        let kind = match b {
            b' ' => Whitespace::Space,
            b'\t' => Whitespace::Tab,
            b'\n' => Whitespace::Newline,
            _ => return None,
        };
        let start = at.location();
        at.advance(if b == b'\n' { "\n" } else { " " });
        out.push(TokenWithSpan::new(
            Token::Whitespace(kind),
            Span::new(start, at.location()),
        ));
    }
    Some(())
}

/// sqlparser's tokens (with their spans) for `sql`, from the lexer's
/// `tokens` of it; `None` when the text holds anything the conversion does
/// not make exactly as sqlparser would.
pub fn from_lexed(tokens: &[Lexed<'_>], dialect: Dialect) -> Option<Vec<TokenWithSpan>> {
    let mut out = Vec::with_capacity(tokens.len() + tokens.len() / 2);
    let mut at = Cursor { line: 1, column: 1 };
    for (i, t) in tokens.iter().enumerate() {
        if t.kind == Kind::Space {
            spaces(t.text, &mut at, &mut out)?;
            continue;
        }
        if let Some(next) = tokens.get(i + 1)
            && let Some(&first) = next.text.as_bytes().first()
            && extended_by(t, first)
        {
            return None;
        }
        // A period only between a name and what it qualifies (`o.id`,
        // `t.*`): elsewhere sqlparser may read it into a number.
        if t.text == "." && !(i > 0 && matches!(tokens[i - 1].kind, Kind::Word | Kind::Quoted)) {
            return None;
        }
        let token = match t.kind {
            Kind::Word => word(t.text)?,
            Kind::Quoted => quoted(t.text, dialect)?,
            Kind::Literal => literal(t.text)?,
            Kind::Parameter => parameter(t.text, dialect)?,
            Kind::Symbol => symbol(t.text)?,
            // Handled above.
            Kind::Space => return None,
        };
        // COPY … FROM STDIN makes sqlparser read the rows after it as data.
        if let Token::Word(w) = &token
            && w.keyword == Keyword::COPY
        {
            return None;
        }
        let start = at.location();
        at.advance(t.text);
        out.push(TokenWithSpan::new(token, Span::new(start, at.location())));
    }
    Some(out)
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
