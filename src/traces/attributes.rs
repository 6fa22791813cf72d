//! A span's attributes in one allocation. Spans are stored by the hundred
//! thousand and mostly never read again, so the layout is for memory and for
//! a cheap drop at eviction: each key and value is a little-endian u32 length
//! followed by its UTF-8 bytes. Reading walks the buffer.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    buf: Box<[u8]>,
    count: u32,
}

impl Attributes {
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let pairs = pairs.into_iter();
        let mut buf = Vec::with_capacity(pairs.size_hint().0 * 32);
        let mut count = 0u32;
        for (key, value) in pairs {
            for text in [key.as_ref(), value.as_ref()] {
                // Lengths beyond u32 cannot arrive: messages are limited far below 4 GiB.
                let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&text.as_bytes()[..len as usize]);
            }
            count += 1;
        }
        Self {
            buf: buf.into_boxed_slice(),
            count,
        }
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.buf }
    }
}

pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    fn text(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (text, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        // Written from a &str, so always valid; never panic on a read anyway.
        Some(std::str::from_utf8(text).unwrap_or(""))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.text()?;
        let value = self.text()?;
        Some((key, value))
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_order_with_empty_and_unicode_text() {
        let pairs = [
            ("http.method", "GET"),
            ("", "empty key"),
            ("ключ", ""),
            ("a\0b", "ü"),
        ];
        let attrs = Attributes::from_pairs(pairs);
        assert_eq!(attrs.len(), 4);
        assert_eq!(attrs.iter().collect::<Vec<_>>(), pairs.to_vec());
        assert_eq!(
            attrs.heap_bytes(),
            pairs
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
        );
        assert!(Attributes::default().is_empty());
        assert_eq!(Attributes::default().iter().count(), 0);
    }
}
