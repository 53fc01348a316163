//! Text made safe to carry where it did not come from: header values on NATS messages,
//! and user input echoed in error messages.

/// Makes a header value safe: one line, visible ASCII and spaces, at most 1 KiB.
pub fn header_safe(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(1024).collect();
    out.truncate(out.trim_end().len());
    out
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
}
