//! Prompt sources: synthetic text of a chosen length, a JSONL file, a fixed system prompt
//! before short synthetic questions, or multi-turn conversations that grow by each answer.

use rand::{Rng, SeedableRng};

use crate::scenario::{Distribution, Prompts};

/// Common English words: each is about one token for BPE tokenizers.
const WORDS: &[&str] = &[
    "the", "city", "river", "light", "morning", "people", "market", "story", "water", "house",
    "road", "music", "garden", "window", "friend", "winter", "paper", "school", "table", "bridge",
];

/// The seed of every shared system prompt: all clients (and both arms of an A/B run) send the
/// same one.
const SYSTEM_SEED: u64 = 0x5157_e3d0;

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// Its text.
    pub content: String,
}

impl Message {
    fn new(role: &'static str, content: String) -> Self {
        Self { role, content }
    }
}

/// Where prompts come from. A closed-loop client owns one, so a multi-turn conversation is
/// that client's: each answer joins it before the next question.
pub struct PromptSource {
    kind: Prompts,
    lines: Vec<String>,
    next: usize,
    /// The shared system prompt of `shared_prefix` and `multi_turn`.
    system: Option<String>,
    /// The conversation so far (`multi_turn`), the last message the question just asked.
    conversation: Vec<Message>,
}

impl PromptSource {
    /// A source for a scenario's `prompts` (reads the file, if any).
    pub fn new(kind: &Prompts) -> anyhow::Result<Self> {
        let lines = match kind {
            Prompts::Jsonl { path } => read_jsonl(path)?,
            _ => Vec::new(),
        };
        let system = match kind {
            Prompts::SharedPrefix { system_tokens, .. }
            | Prompts::MultiTurn { system_tokens, .. } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(SYSTEM_SEED);
                Some(words(*system_tokens as usize, &mut rng))
            }
            _ => None,
        };
        Ok(Self {
            kind: kind.clone(),
            lines,
            next: 0,
            system,
            conversation: Vec::new(),
        })
    }

    /// The next prompt.
    pub fn next(&mut self, rng: &mut impl Rng) -> Vec<Message> {
        let question = |tokens: &Distribution, rng: &mut _| {
            Message::new("user", words(tokens.sample(rng).max(1) as usize, rng))
        };
        match &self.kind {
            Prompts::Synthetic { tokens } => vec![question(tokens, rng)],
            Prompts::Jsonl { .. } => {
                let prompt = self.lines[self.next % self.lines.len()].clone();
                self.next += 1;
                vec![Message::new("user", prompt)]
            }
            Prompts::SharedPrefix { tokens, .. } => {
                let system = self.system.clone().unwrap_or_default();
                vec![Message::new("system", system), question(tokens, rng)]
            }
            Prompts::MultiTurn { tokens, turns, .. } => {
                let asked = self
                    .conversation
                    .iter()
                    .filter(|m| m.role == "user")
                    .count();
                if self.conversation.is_empty() || asked as u64 >= *turns {
                    let system = self.system.clone().unwrap_or_default();
                    self.conversation = vec![Message::new("system", system)];
                }
                let question = question(tokens, rng);
                self.conversation.push(question);
                self.conversation.clone()
            }
        }
    }

    /// The answer to the last prompt: a multi-turn conversation goes on with it (a failed
    /// request's empty answer ends the conversation).
    pub fn answered(&mut self, answer: String) {
        if !matches!(self.kind, Prompts::MultiTurn { .. }) {
            return;
        }
        if answer.is_empty() {
            self.conversation.clear();
        } else {
            self.conversation.push(Message::new("assistant", answer));
        }
    }
}

/// `n` random common words.
fn words(n: usize, rng: &mut impl Rng) -> String {
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The prompts of a JSONL file, one `{"prompt": "..."}` per line.
fn read_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
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
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_prompts_share_their_system_prompt_only() {
        let kind = Prompts::SharedPrefix {
            system_tokens: 50,
            tokens: Distribution::Fixed(5),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (mut a, mut b) = (
            PromptSource::new(&kind).unwrap(),
            PromptSource::new(&kind).unwrap(),
        );
        let (x, y) = (a.next(&mut rng), b.next(&mut rng));
        assert_eq!(x[0], y[0], "one system prompt for every client");
        assert_eq!(x[0].content.split(' ').count(), 50);
        assert_ne!(x[1], y[1], "questions differ");
        assert_eq!(x[1].content.split(' ').count(), 5);
    }

    #[test]
    fn a_multi_turn_conversation_grows_by_each_answer_and_starts_again() {
        let kind = Prompts::MultiTurn {
            system_tokens: 10,
            tokens: Distribution::Fixed(3),
            turns: 2,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut source = PromptSource::new(&kind).unwrap();
        let first = source.next(&mut rng);
        assert_eq!(
            first.iter().map(|m| m.role).collect::<Vec<_>>(),
            ["system", "user"]
        );
        source.answered("an answer".into());
        let second = source.next(&mut rng);
        assert_eq!(second[..2], first[..]);
        assert_eq!(second[2], Message::new("assistant", "an answer".into()));
        assert_eq!(second.len(), 4);
        source.answered("another".into());
        // Two turns asked: a new conversation.
        let third = source.next(&mut rng);
        assert_eq!(third.len(), 2);
        assert_eq!(third[0], first[0]);
        // A failed turn ends the conversation too.
        source.answered(String::new());
        assert_eq!(source.next(&mut rng).len(), 2);
    }
}
