//! Byte classes and word-at-a-time searches used by the framer's hot loops.
//!
//! The framer spends most of its time in character data and attribute values, looking
//! for the few bytes that end them. These searches read eight bytes per step and test
//! them all at once (the "has zero byte" trick), which keeps the scan near one cycle
//! per byte without `unsafe` or SIMD intrinsics.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Sets the high bit of every byte of `word` that is zero. Bits above the first true
/// hit may be false positives (borrow propagation), so only the lowest set bit is used.
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// Sets the high bit of every byte of `word` below `n` (n at most 128); same caveat.
#[inline(always)]
fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS
}

#[inline(always)]
fn equal_bytes(word: u64, byte: u8) -> u64 {
    zero_bytes(word ^ (ONES * byte as u64))
}

#[inline(always)]
fn word_at(hay: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hay[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Index of the first byte in `hay` that ends a run of character data: `<`, `&`, `>`
/// (to catch `]]>`) or a control character (all below 0x20, some of them legal).
#[inline]
pub(crate) fn find_text_stop(hay: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= hay.len() {
        let word = word_at(hay, at);
        let hits =
            equal_bytes(word, b'<') | equal_bytes(word, b'&') | equal_bytes(word, b'>') | bytes_below(word, 0x20);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    hay[at..].iter().position(|&b| b == b'<' || b == b'&' || b == b'>' || b < 0x20).map(|i| at + i)
}

/// Index of the first byte in `hay` that ends a run inside an attribute value quoted
/// with `quote`: the quote, `<`, `&` or a control character.
#[inline]
pub(crate) fn find_value_stop(hay: &[u8], quote: u8) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= hay.len() {
        let word = word_at(hay, at);
        let hits =
            equal_bytes(word, quote) | equal_bytes(word, b'<') | equal_bytes(word, b'&') | bytes_below(word, 0x20);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    hay[at..].iter().position(|&b| b == quote || b == b'<' || b == b'&' || b < 0x20).map(|i| at + i)
}

/// Index of the first byte in `hay` that may end a CDATA section or is a control
/// character.
#[inline]
pub(crate) fn find_cdata_stop(hay: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= hay.len() {
        let word = word_at(hay, at);
        let hits = equal_bytes(word, b'>') | bytes_below(word, 0x20);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    hay[at..].iter().position(|&b| b == b'>' || b < 0x20).map(|i| at + i)
}

const NAME_START: u8 = 1;
const NAME: u8 = 2;
const SPACE: u8 = 4;

/// Byte classes for names and whitespace. Names are ASCII: every XMPP schema's are,
/// and of the non-ASCII names XML allows, the parsers clients use (expat, with its
/// older XML 1.0 name tables) refuse many (`U+00B7` or `U+0300` first, `U+037E`,
/// `U+2000`, anything above `U+FFFF`). A breaker sent such names through us to cut
/// slixmpp recipients; refusing every non-ASCII name byte closes the whole class.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c == b':';
        let rest = start || c.is_ascii_digit() || c == b'-' || c == b'.';
        let space = c == b' ' || c == b'\t' || c == b'\n' || c == b'\r';
        table[b] = (start as u8 * NAME_START) | (rest as u8 * NAME) | (space as u8 * SPACE);
        b += 1;
    }
    table
};

#[inline(always)]
pub(crate) fn is_name_start(b: u8) -> bool {
    CLASS[b as usize] & NAME_START != 0
}

#[inline(always)]
pub(crate) fn is_name_char(b: u8) -> bool {
    CLASS[b as usize] & NAME != 0
}

#[inline(always)]
pub(crate) fn is_space(b: u8) -> bool {
    CLASS[b as usize] & SPACE != 0
}

/// Length of the run of name characters at the start of `hay`.
#[inline]
pub(crate) fn name_run(hay: &[u8]) -> usize {
    hay.iter().position(|&b| !is_name_char(b)).unwrap_or(hay.len())
}

/// Length of the run of whitespace at the start of `hay`.
#[inline]
pub(crate) fn space_run(hay: &[u8]) -> usize {
    hay.iter().position(|&b| !is_space(b)).unwrap_or(hay.len())
}

/// Whether `c` is a character XML 1.0 allows (production `Char`).
pub(crate) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Checks that `bytes` is UTF-8 made only of XML characters. Control characters were
/// already rejected by the scanner, so what remains are U+FFFE and U+FFFF, which UTF-8
/// allows and XML does not (both start with byte 0xEF).
pub(crate) fn check_utf8(bytes: &[u8]) -> bool {
    // Most stanzas are ASCII: one fast pass settles both questions.
    if bytes.is_ascii() {
        return true;
    }
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    memchr::memchr_iter(0xEF, bytes)
        .all(|at| !(bytes.get(at + 1) == Some(&0xBF) && matches!(bytes.get(at + 2), Some(0xBE | 0xBF))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_text_stop(hay: &[u8]) -> Option<usize> {
        hay.iter().position(|&b| b == b'<' || b == b'&' || b == b'>' || b < 0x20)
    }

    /// The word-at-a-time search finds the same first stop byte as a plain loop, at
    /// every position and next to every byte value (borrows must not leak downwards).
    #[test]
    fn text_stop_matches_naive_search() {
        for stop in 0u8..=255 {
            for at in 0..20 {
                let mut hay = vec![b'a'; 20];
                hay[at] = stop;
                if at + 1 < hay.len() {
                    hay[at + 1] = 0x00;
                }
                assert_eq!(find_text_stop(&hay), naive_text_stop(&hay), "byte {stop} at {at}");
                hay[at] = 0xFF;
                assert_eq!(find_text_stop(&hay), naive_text_stop(&hay));
            }
        }
    }

    /// The value search stops at its own quote only, not the other one.
    #[test]
    fn value_stop_respects_quote_kind() {
        assert_eq!(find_value_stop(b"ab\"cd'ef", b'\''), Some(5));
        assert_eq!(find_value_stop(b"ab\"cd'ef", b'"'), Some(2));
        assert_eq!(find_value_stop(b"abcdefghijkl", b'"'), None);
    }

    /// U+FFFE and U+FFFF are valid UTF-8 but not XML characters.
    #[test]
    fn utf8_check_rejects_noncharacters() {
        assert!(check_utf8("héllo ☃".as_bytes()));
        assert!(!check_utf8(&[0xEF, 0xBF, 0xBE]));
        assert!(!check_utf8(&[0xEF, 0xBF, 0xBF]));
        assert!(check_utf8(&[0xEF, 0xBF, 0xBD]));
        assert!(!check_utf8(&[0xC3]));
    }
}
