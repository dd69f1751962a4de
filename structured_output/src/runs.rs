//! Bounds on the runs inside JSON that a grammar leaves unbounded. JSON Schema's `number` lets
//! a number grow without end, and flexible layouts let whitespace do the same: a small model,
//! even at temperature 0, can write `3222233333333…` until its length limit. Digits past what
//! an IEEE double holds mean nothing to any client, so a number may have at most
//! [`MAX_SIGNIFICANT_DIGITS`] significant digits (and as many leading zeros), an exponent at
//! most [`MAX_EXPONENT_DIGITS`] digits, and whitespace between tokens runs at most
//! [`MAX_WHITESPACE_RUN`] bytes. The grammar's mask is narrowed by these bounds token by token.

/// Significant digits of a number's mantissa: 17 round-trip any IEEE double.
pub const MAX_SIGNIFICANT_DIGITS: u32 = 17;
/// Digits of a number's exponent (an IEEE double's is at most 308).
pub const MAX_EXPONENT_DIGITS: u32 = 3;
/// Bytes of whitespace in a row outside strings (deep indentation fits).
pub const MAX_WHITESPACE_RUN: u32 = 64;

/// Where the output is, as far as the bounds care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Place {
    /// Between values, keys and punctuation.
    #[default]
    Between,
    /// Inside a string (`escaped`: just after a backslash).
    String { escaped: bool },
    /// Inside a number.
    Number(NumberRun),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NumberRun {
    /// Zeros before the first non-zero digit.
    leading_zeros: u32,
    /// Digits from the first non-zero one on.
    significant: u32,
    /// Digits of the exponent, once `e` was written.
    exponent: Option<u32>,
}

/// The bounds' view of the output so far, fed byte by byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonRuns {
    place: Place,
    whitespace: u32,
}

impl JsonRuns {
    /// Feeds `bytes`; `false` if they break a bound (the state is then meaningless).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed_byte(b))
    }

    /// True where some next token could break a bound: inside a number, or after whitespace.
    pub fn constraining(&self) -> bool {
        matches!(self.place, Place::Number(_)) || self.whitespace > 0
    }

    fn feed_byte(&mut self, byte: u8) -> bool {
        if let Place::String { escaped } = &mut self.place {
            match (*escaped, byte) {
                (true, _) => *escaped = false,
                (false, b'\\') => *escaped = true,
                (false, b'"') => self.place = Place::Between,
                _ => {}
            }
            return true;
        }
        if matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            self.place = Place::Between;
            self.whitespace += 1;
            return self.whitespace <= MAX_WHITESPACE_RUN;
        }
        self.whitespace = 0;
        match (&mut self.place, byte) {
            (Place::Number(run), b'0'..=b'9') => run.digit(byte),
            (Place::Number(run), b'e' | b'E') => {
                run.exponent = Some(0);
                true
            }
            (Place::Number(_), b'.' | b'+' | b'-') => true,
            (_, b'"') => {
                self.place = Place::String { escaped: false };
                true
            }
            (_, b'-') => {
                self.place = Place::Number(NumberRun::default());
                true
            }
            (_, b'0'..=b'9') => {
                let mut run = NumberRun::default();
                let within = run.digit(byte);
                self.place = Place::Number(run);
                within
            }
            _ => {
                self.place = Place::Between;
                true
            }
        }
    }
}

impl NumberRun {
    fn digit(&mut self, byte: u8) -> bool {
        match &mut self.exponent {
            Some(digits) => {
                *digits += 1;
                *digits <= MAX_EXPONENT_DIGITS
            }
            None if byte == b'0' && self.significant == 0 => {
                self.leading_zeros += 1;
                self.leading_zeros <= MAX_SIGNIFICANT_DIGITS
            }
            None => {
                self.significant += 1;
                self.significant <= MAX_SIGNIFICANT_DIGITS
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(text: &str) -> bool {
        JsonRuns::default().feed(text.as_bytes())
    }

    #[test]
    fn numbers_keep_what_a_double_holds() {
        assert!(fits(r#"{"x": 12345678901234567, "y": -1.5e308}"#));
        assert!(fits("0.00000000000000012345678901234567"));
        assert!(!fits("123456789012345678"), "18 significant digits");
        assert!(!fits("3.222233333333333333"));
        assert!(!fits("1e1000"), "a 4-digit exponent");
        assert!(!fits("0.000000000000000000001"), "18 leading zeros");
        // Digits in strings are text, however many.
        assert!(fits(r#"{"id": "1234567890123456789012345"}"#));
        assert!(fits(r#"{"q": "a \"quoted\" 12345678901234567890"}"#));
        // A number ends at punctuation; the next one starts afresh.
        assert!(fits("[12345678901234567, 12345678901234567]"));
    }

    #[test]
    fn whitespace_runs_are_bounded() {
        let deep = format!("{{\n{}\"a\": 1}}", " ".repeat(60));
        assert!(fits(&deep));
        assert!(!fits(&format!("{{{}}}", "\n".repeat(65))));
        // Whitespace inside strings is text.
        assert!(fits(&format!("\"{}\"", " ".repeat(500))));
    }

    #[test]
    fn the_state_says_when_a_token_could_break_a_bound() {
        let mut runs = JsonRuns::default();
        assert!(!runs.constraining());
        runs.feed(br#"{"a": 1"#);
        assert!(runs.constraining());
        runs.feed(b", ");
        assert!(runs.constraining(), "after whitespace");
        runs.feed(br#""b"#);
        assert!(!runs.constraining(), "in a string");
    }
}
