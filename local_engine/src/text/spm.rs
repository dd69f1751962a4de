//! SentencePiece's BPE as GGUF files carry it (`tokenizer.ggml.model = "llama"`: Llama 2,
//! Mistral, TinyLlama, Phi-3, Gemma): no merge list, but a score per piece; the text's spaces
//! become `▁`, and the adjacent pair whose joined piece scores highest is merged first (the
//! leftmost among equals), until no joined pair is a piece. Characters that end up in no piece
//! are spelled as byte tokens (`<0x41>`), or the unknown token where the vocabulary has none.
//! This is the algorithm llama.cpp's SPM tokenizer runs; its test vectors check ours.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The piece that stands for a space.
pub const SPACE: char = '\u{2581}';

/// A SentencePiece vocabulary: each piece's id and score.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xNN>` for each byte, where the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    unknown: u32,
}

/// A pair of adjacent symbols that could merge, ordered by the joined piece's score.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Higher score first; among equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// One symbol of the text being merged: a byte range, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SentencePiece {
    /// The vocabulary from its pieces (in id order) and their scores; `unknown` is the id of
    /// the unknown piece.
    pub fn new(pieces: &[String], scores: Vec<f32>, unknown: u32) -> Self {
        let ids: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| (piece.clone(), id as u32))
            .collect();
        let byte_ids = std::array::from_fn(|b| ids.get(&format!("<0x{b:02X}>")).copied());
        Self {
            ids,
            scores,
            byte_ids,
            unknown,
        }
    }

    /// The ids of `text` with its spaces already written as `▁` (and the prefix space, if the
    /// model wants one, already added).
    pub fn encode_escaped(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.consider(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(c) = queue.pop() {
            let (left, right) = (symbols[c.left], symbols[c.right]);
            // Stale: one side merged into something else since this pair was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != c.len {
                continue;
            }
            symbols[c.left].len += right.len;
            symbols[c.right].len = 0;
            symbols[c.left].next = right.next;
            if let Some(next) = right.next {
                symbols[next].prev = Some(c.left);
            }
            if let Some(prev) = left.prev {
                self.consider(text, &symbols, prev, c.left, &mut queue);
            }
            if let Some(next) = right.next {
                self.consider(text, &symbols, c.left, next, &mut queue);
            }
        }
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                // Only single characters can be missing (merges make pieces): their bytes.
                None => out.extend(
                    piece
                        .bytes()
                        .map(|b| self.byte_ids[b as usize].unwrap_or(self.unknown)),
                ),
            }
            at = s.next;
        }
    }

    fn consider(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Candidate>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        let joined = &text[l.start..r.start + r.len];
        if let Some(&id) = self.ids.get(joined) {
            queue.push(Candidate {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len: joined.len(),
            });
        }
    }
}

/// `text` with each space written as `▁`, after a leading `▁` if `prefix_space`.
pub fn escape(text: &str, prefix_space: bool) -> String {
    let mut escaped = String::with_capacity(text.len() + 3);
    if prefix_space {
        escaped.push(SPACE);
    }
    escaped.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SentencePiece {
        let pieces: Vec<String> = [
            "<unk>", "▁", "a", "b", "c", "ab", "bc", "▁a", "abc", "<0x21>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // "bc" outscores "ab": "abc" must come from "a" + "bc", then "abc".
        let scores = vec![0.0, -1.0, -2.0, -2.0, -2.0, -5.0, -3.0, -4.0, -1.0, 0.0];
        SentencePiece::new(&pieces, scores, 0)
    }

    fn encode(text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        vocab().encode_escaped(text, &mut out);
        out
    }

    #[test]
    fn highest_scoring_pair_merges_first() {
        assert_eq!(encode("abc"), vec![8]);
        // "▁a" (-4) beats "ab" (-5).
        assert_eq!(encode("▁ab"), vec![7, 3]);
        // "bc" (-3) first, then "abc" (-1) before "▁a" (-4) could happen.
        assert_eq!(encode("▁abc"), vec![1, 8]);
    }

    #[test]
    fn characters_outside_the_vocabulary_become_bytes_or_unknown() {
        // '!' has a byte piece; 'é' (two bytes) has none: the unknown id for each byte.
        assert_eq!(encode("a!é"), vec![2, 9, 0, 0]);
    }

    #[test]
    fn escaping_marks_spaces_and_the_prefix() {
        assert_eq!(escape("a b", true), "▁a▁b");
        assert_eq!(escape("a b", false), "a▁b");
    }
}
