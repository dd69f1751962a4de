//! Stop strings over streamed text. Text that might be the start of a stop string is held back
//! until it is known not to be one, so a client never receives part of a stop string.

/// What to do with the text produced so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Send this text (possibly empty) and continue.
    Continue(String),
    /// A stop string matched: send this text (everything before the stop string) and finish.
    Stopped(String),
}

/// Scans streamed text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released, because it may begin a stop string.
    pending: String,
}

impl StopMatcher {
    /// A matcher for these stop strings.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            pending: String::new(),
        }
    }

    /// Adds a delta of text; returns what may be released now.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_string());
        }
        self.pending.push_str(delta);
        // The earliest stop string occurrence wins.
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(before);
        }
        // Hold back the longest suffix of `pending` that is a prefix of some stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let release_to = self.pending.len() - hold;
        let released = self.pending[..release_to].to_string();
        self.pending.drain(..release_to);
        StopOutcome::Continue(released)
    }

    /// Generation ended without a stop string: release what was held back.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`, cut on
/// character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_deltas_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("D tail"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_alarm_is_released() {
        assert_eq!(run(&["END"], &["a E", "Nx", "y"]), ("a ENxy".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn multibyte_text_holds_on_char_boundaries() {
        assert_eq!(
            run(&["안녕히"], &["네 안", "녕", "하세요"]),
            ("네 안녕하세요".into(), false)
        );
        assert_eq!(
            run(&["안녕히"], &["네 안", "녕히 가"]),
            ("네 ".into(), true)
        );
    }
}
