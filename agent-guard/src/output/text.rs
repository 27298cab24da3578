//! Text for people: what a run controls (paths, argv, comm, run names) is shown with control
//! characters escaped, so an agent cannot disguise the evidence a responder reads (a `\n` that
//! starts a fake line, an ESC sequence that rewrites the terminal).
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and backslash escaped: `\n`, `\r`, `\t`,
/// `\\`, else `\xNN` (`\u{NNNN}` for C1). Everything else, including non-ASCII text, stays.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(printable("/workspace/ok.txt"), "/workspace/ok.txt");
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("\x1b[2K\rrm -rf /"), "\\x1b[2K\\rrm -rf /");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("back\\slash"), "back\\\\slash");
        assert_eq!(printable("\u{85}next"), "\\u{0085}next");
        assert_eq!(printable("café ünïcode"), "café ünïcode");
        assert_eq!(printable("\x7f"), "\\x7f");
    }
}
