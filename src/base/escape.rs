//! Text that came from outside (requests, stanzas), as it may reach the log: control characters
//! escaped (`\n`, `\u{1b}`), so it can neither forge log lines nor send escape sequences to an
//! admin's terminal, and cut to a bounded length.

use std::fmt::{self, Display, Write as _};

/// Longest logged value, in characters.
pub const MAX_CHARS: usize = 128;
/// A value as logged: at most [`MAX_CHARS`] characters, control characters escaped (`\n`,
/// `\u{1b}`), formatted only when the line is really written.
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = EscapingWriter {
            inner: f,
            written: 0,
        };
        // Stops with an error once the limit is reached: that is not a failure.
        match write!(out, "{}", self.0) {
            Err(_) if out.written > MAX_CHARS => out.inner.write_str("…"),
            other => other,
        }
    }
}

struct EscapingWriter<'a, 'b> {
    inner: &'a mut fmt::Formatter<'b>,
    written: usize,
}

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.written += 1;
            if self.written > MAX_CHARS {
                return Err(fmt::Error);
            }
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                write!(self.inner, "{}", c.escape_default())?;
            } else {
                self.inner.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(
            Escaped("a\nb\u{1b}[31mc\r").to_string(),
            "a\\nb\\u{1b}[31mc\\r"
        );
        assert_eq!(
            Escaped("alice@example.com").to_string(),
            "alice@example.com"
        );
        let long = "é".repeat(200);
        let cut = Escaped(&long).to_string();
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
