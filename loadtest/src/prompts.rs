//! Prompt sources: synthetic text of a chosen length, or a JSONL file.

use rand::Rng;

use crate::scenario::Prompts;

/// Common English words: each is about one token for BPE tokenizers.
const WORDS: &[&str] = &[
    "the", "city", "river", "light", "morning", "people", "market", "story", "water", "house",
    "road", "music", "garden", "window", "friend", "winter", "paper", "school", "table", "bridge",
];

/// Where prompts come from: built-in text of a sampled length, or a JSONL file in order.
pub struct PromptSource {
    kind: Prompts,
    lines: Vec<String>,
    next: usize,
}

impl PromptSource {
    /// A source for a scenario's `prompts` (reads the file, if any).
    pub fn new(kind: &Prompts) -> anyhow::Result<Self> {
        let lines = match kind {
            Prompts::Synthetic { .. } => Vec::new(),
            Prompts::Jsonl { path } => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                let lines: Vec<String> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l)?;
                        v["prompt"]
                            .as_str()
                            .map(str::to_string)
                            .ok_or_else(|| anyhow::anyhow!("a line has no string `prompt`"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                anyhow::ensure!(!lines.is_empty(), "{} has no prompts", path.display());
                lines
            }
        };
        Ok(Self {
            kind: kind.clone(),
            lines,
            next: 0,
        })
    }

    /// The next prompt.
    pub fn next(&mut self, rng: &mut impl Rng) -> String {
        match &self.kind {
            Prompts::Synthetic { tokens } => {
                let n = tokens.sample(rng).max(1) as usize;
                (0..n)
                    .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            Prompts::Jsonl { .. } => {
                let prompt = self.lines[self.next % self.lines.len()].clone();
                self.next += 1;
                prompt
            }
        }
    }
}
