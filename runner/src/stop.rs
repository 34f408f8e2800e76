//! Stop strings that may span token boundaries.
//!
//! Generated text arrives as decoded deltas, one per token. A stop string such as
//! `"\nUser:"` can be split over several tokens (`"\n"`, `"User"`, `":"`), so text that
//! might be the beginning of a stop string must not be shown to the client until the
//! next deltas prove it is not. [`StopMatcher`] holds back exactly that text: the
//! longest end of the pending text that is a prefix of some stop string.
//!
//! When several stop strings could match, the one that is completed first while the
//! text streams in wins (the one that ends earliest; at equal ends the longer one), so
//! the output never depends on how the text was split into deltas. The output ends just
//! before the stop string, which is not part of it (as in the OpenAI API).

/// What one call to [`StopMatcher::push`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that can be shown now; it never contains (or starts) a stop string.
    pub text: String,
    /// A stop string was found; generation should end. `text` ends right before it.
    pub stopped: bool,
}

/// Finds stop strings in streamed text and decides which text is safe to emit.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted, because it may start a stop string.
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`. Empty strings are ignored (they would stop before the
    /// first token); with no stop strings every delta is emitted unchanged.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            pending: String::new(),
            stopped: false,
        }
    }

    /// The stop strings in use.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string has been found. After that, `push` emits nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Text received but held back because it may be the start of a stop string.
    pub fn held_back(&self) -> &str {
        &self.pending
    }

    /// Adds the next decoded text delta and returns the text that is now safe to emit.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                text: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopStep {
                text: delta.to_owned(),
                stopped: false,
            };
        }
        self.pending.push_str(delta);

        if let Some(start) = self.first_completed_stop() {
            self.pending.truncate(start);
            self.stopped = true;
            return StopStep {
                text: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }

        let hold_from = self.partial_stop_start();
        let rest = self.pending.split_off(hold_from);
        let text = std::mem::replace(&mut self.pending, rest);
        StopStep {
            text,
            stopped: false,
        }
    }

    /// Ends the stream without a stop string (end-of-sequence token, length limit,
    /// cancellation) and returns the held-back text, which then belongs to the output.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Start of the stop string that completes first in `pending`, if any.
    fn first_completed_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|stop| {
                self.pending
                    .find(stop.as_str())
                    .map(|start| (start + stop.len(), start))
            })
            .min_by_key(|&(end, start)| (end, start))
            .map(|(_, start)| start)
    }

    /// Start of the longest end of `pending` that is a proper prefix of a stop string;
    /// `pending.len()` when there is none.
    fn partial_stop_start(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self
            .pending
            .len()
            .saturating_sub(longest_stop.saturating_sub(1));
        (earliest..self.pending.len())
            .filter(|&i| self.pending.is_char_boundary(i))
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops
                    .iter()
                    .any(|stop| stop.len() > tail.len() && stop.starts_with(tail))
            })
            .unwrap_or(self.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `deltas` and returns (emitted text including the final flush, stopped).
    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for d in deltas {
            let step = m.push(d);
            out.push_str(&step.text);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("hello").text, "hello");
        assert_eq!(m.held_back(), "");
        let mut empty_only = StopMatcher::new([""]);
        assert_eq!(empty_only.push("a").text, "a");
    }

    #[test]
    fn stop_inside_one_delta_truncates() {
        assert_eq!(run(&["END"], &["abcENDdef"]), ("abc".into(), true));
    }

    #[test]
    fn stop_spanning_tokens_is_found_and_never_emitted() {
        let mut m = StopMatcher::new(["\nUser:"]);
        assert_eq!(m.push("Hi there").text, "Hi there");
        let step = m.push("!\n");
        assert_eq!(step.text, "!");
        assert_eq!(m.held_back(), "\n");
        assert_eq!(m.push("Us").text, "");
        let step = m.push("er: more");
        assert_eq!(
            step,
            StopStep {
                text: String::new(),
                stopped: true
            }
        );
        assert!(m.is_stopped());
        assert_eq!(m.push("after").text, "");
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("ST").text, "");
        assert_eq!(m.push("ART").text, "START");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn held_back_text_is_flushed_at_the_end() {
        assert_eq!(
            run(&["</s>"], &["answer", "</"]),
            ("answer</".into(), false)
        );
    }

    #[test]
    fn overlapping_prefixes_hold_the_longest_candidate() {
        // "aab": after "aa" both "a" positions could start "aab".
        assert_eq!(run(&["aab"], &["xa", "a", "ab"]), ("xa".into(), true));
    }

    #[test]
    fn the_stop_completed_first_wins() {
        // "bc" completes before "abcd" would.
        assert_eq!(run(&["abcd", "bc"], &["abcd"]), ("a".into(), true));
        assert_eq!(
            run(&["abcd", "bc"], &["a", "b", "c", "d"]),
            ("a".into(), true)
        );
        // Same end: the longer one (earlier start) wins.
        assert_eq!(run(&["c", "abc"], &["xabc"]), ("x".into(), true));
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        assert_eq!(
            run(&["。终"], &["你好", "。", "终了"]),
            ("你好".into(), true)
        );
        assert_eq!(run(&["éx"], &["café", " ok"]), ("café ok".into(), false));
    }

    /// The reference: feed the text one character at a time and stop as soon as some
    /// stop string ends at the current position (the longest one if several do).
    fn reference(stops: &[String], text: &str) -> (String, bool) {
        let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            let seen = &text[..end];
            if let Some(stop) = stops
                .iter()
                .filter(|s| seen.ends_with(s.as_str()))
                .max_by_key(|s| s.len())
            {
                return (seen[..end - stop.len()].to_owned(), true);
            }
        }
        (text.to_owned(), false)
    }

    /// Splits `text` at the given fractions, moved to character boundaries.
    fn split(text: &str, cuts: &[usize]) -> Vec<String> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| c % (text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| text[w[0]..w[1]].to_owned())
            .collect()
    }

    proptest! {
        #[test]
        fn emitted_plus_held_back_is_the_input_up_to_the_stop(
            text in "[abé\n]{0,40}",
            stops in proptest::collection::vec("[abé\n]{0,4}", 0..4),
            cuts in proptest::collection::vec(0usize..64, 0..12),
        ) {
            let deltas = split(&text, &cuts);
            let mut m = StopMatcher::new(stops.clone());
            let mut emitted = String::new();
            let mut received = String::new();
            let mut stopped = false;
            for d in &deltas {
                received.push_str(d);
                let step = m.push(d);
                emitted.push_str(&step.text);
                if step.stopped {
                    stopped = true;
                    break;
                }
                // Nothing is lost or duplicated while streaming ...
                prop_assert_eq!(format!("{}{}", emitted, m.held_back()), received.clone());
                // ... and emitted text never contains a stop string.
                for s in stops.iter().filter(|s| !s.is_empty()) {
                    prop_assert!(!emitted.contains(s.as_str()));
                }
            }
            if !stopped {
                emitted.push_str(&m.finish());
            }
            // The result does not depend on how the text was split.
            prop_assert_eq!((emitted, stopped), reference(&stops, &text));
        }
    }
}
