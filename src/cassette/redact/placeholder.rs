//! Placeholders of the same shape as what they replace: dates that are still dates in the same format
//! (so a mapping's date conversions work on them in a replay), and base64 media of the same length that
//! keep the file's signature (so a mapping that sniffs the type from the bytes still finds it).

use base64::Engine as _;

/// Known file signatures kept at the start of media placeholders: not patient data, and what type
/// sniffing reads.
const SIGNATURES: &[&[u8]] = &[
    &[0xff, 0xd8, 0xff],
    &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a],
    b"GIF8",
    b"%PDF-",
    b"II*\0",
    b"MM\0*",
    b"BM",
];

/// The signature `bytes` start with, if it is one of the known ones.
pub fn signature(bytes: &[u8]) -> Option<&'static [u8]> {
    SIGNATURES.iter().copied().find(|s| bytes.starts_with(s))
}

/// A date or date-time replaced by one fixed moment in the same format: `2023-11-14` → `1900-02-13`,
/// `2023-11-14T17:13:20-05:00` → `1900-02-13T00:00:00-05:00` (the offset is kept), `11/14/2023` →
/// `02/13/1900`; other text has its digits zeroed. Day and month differ, so a swap still shows.
pub fn placeholder_date(original: &str) -> String {
    const ISO: &str = "1900-02-13T00:00:00";
    const US: &str = "02/13/1900";
    let bytes = original.as_bytes();
    let digit_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let iso = bytes.len() >= 10 && (0..10).all(|i| if i == 4 || i == 7 { bytes[i] == b'-' } else { digit_at(i) });
    if iso {
        // Date, then time: replace what the template covers, keep fractions and the offset's shape.
        let covered = original.len().min(ISO.len());
        let same_shape =
            original[..covered].bytes().zip(ISO.bytes()).all(|(a, b)| a.is_ascii_digit() == b.is_ascii_digit());
        if same_shape {
            let rest: String = original[covered..]
                .chars()
                .scan(false, |in_offset, c| {
                    *in_offset |= matches!(c, '+' | '-' | 'Z');
                    Some(if c.is_ascii_digit() && !*in_offset { '0' } else { c })
                })
                .collect();
            return format!("{}{rest}", &ISO[..covered]);
        }
    }
    let us = bytes.len() >= 10 && (0..10).all(|i| if i == 2 || i == 5 { bytes[i] == b'/' } else { digit_at(i) });
    if us {
        let rest: String = original[10..].chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect();
        return format!("{US}{rest}");
    }
    original.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect()
}

/// Base64 of the same length whose bytes are the original's file signature (if known) and then zeros.
pub fn placeholder_base64(original: &str) -> String {
    let compact: String = original.chars().filter(|c| !c.is_whitespace()).collect();
    let padding = compact.chars().rev().take_while(|c| *c == '=').count();
    let head =
        base64::engine::general_purpose::STANDARD.decode(&compact[..compact.len().min(16) / 4 * 4]).unwrap_or_default();
    let decoded_len = (compact.len() / 4 * 3).saturating_sub(padding);
    match signature(&head) {
        Some(sig) if compact.len().is_multiple_of(4) && decoded_len >= sig.len() => {
            let mut bytes = sig.to_vec();
            bytes.resize(decoded_len, 0);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
        _ => format!("{}{}", "A".repeat(compact.len() - padding), "=".repeat(padding)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_their_format() {
        assert_eq!(placeholder_date("1984-07-21"), "1900-02-13");
        assert_eq!(placeholder_date("2023-11-14T17:13:20-05:00"), "1900-02-13T00:00:00-05:00");
        assert_eq!(placeholder_date("2023-11-14T17:13:20.123Z"), "1900-02-13T00:00:00.000Z");
        assert_eq!(placeholder_date("11/14/2023"), "02/13/1900");
        assert_eq!(placeholder_date("2023-11"), "0000-00");
    }

    #[test]
    fn media_keep_length_and_signature() {
        let jpeg = base64::engine::general_purpose::STANDARD.encode([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4, 5, 6, 7]);
        let p = placeholder_base64(&jpeg);
        assert_eq!(p.len(), jpeg.len());
        let decoded = base64::engine::general_purpose::STANDARD.decode(&p).unwrap();
        assert_eq!(decoded, [0xff, 0xd8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(placeholder_base64("aGVsbG8gd29ybGQ="), "AAAAAAAAAAAAAAA=");
    }
}
