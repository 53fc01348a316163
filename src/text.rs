//! Text made safe to carry where it did not come from: header values on NATS messages,
//! event metadata taken from requests, and user input echoed in error messages.

/// Makes a header value safe: one line, visible ASCII and spaces, at most 1 KiB.
pub fn header_safe(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(1024).collect();
    out.truncate(out.trim_end().len());
    out
}

/// Appends `text` double-quoted, with `"` and `\` escaped by a backslash: an RFC 5322
/// quoted-string and an element of a PostgreSQL array literal alike.
pub fn push_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Longest piece of a client's input an error message repeats.
pub const ECHO_CHARS: usize = 64;

/// `text` as an error message may repeat it: Rust's debug quoting (so control
/// characters show as escapes), cut to [`ECHO_CHARS`] characters with the full length
/// said, so an answer never grows with its question.
pub fn echo(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= ECHO_CHARS {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({} bytes)", text.len())
}

/// `text` without control characters (each becomes U+FFFD) and at most `max_chars`
/// characters long: what a value taken from a request may be stored as.
pub fn printable(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

/// Whether `text` is a sane identifier to carry along: 1 to `max` visible ASCII characters.
pub fn is_token(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_visible_line() {
        assert_eq!(header_safe("a\r\nb\tc\u{1b}[31m"), "a??b?c?[31m");
        assert_eq!(header_safe("ünï"), "?n?");
        assert_eq!(header_safe(&"x".repeat(5000)).len(), 1024);
        assert_eq!(header_safe("trailing   "), "trailing");
    }

    #[test]
    fn echoes_are_short_and_visible() {
        assert_eq!(echo("abc"), "\"abc\"");
        assert_eq!(echo("a\u{0}b"), "\"a\\0b\"");
        let long = echo(&"x".repeat(50_000));
        assert!(long.len() < 100, "{long}");
        assert!(long.ends_with("… (50000 bytes)"), "{long}");
    }

    #[test]
    fn printable_drops_control_characters_and_length() {
        assert_eq!(printable("a\u{1b}[31mb\0", 100), "a\u{FFFD}[31mb\u{FFFD}");
        assert_eq!(printable(&"é".repeat(10), 3), "ééé");
        assert!(is_token("req-1", 128) && !is_token("a b", 128) && !is_token("", 128) && !is_token("ü", 128));
    }
}
