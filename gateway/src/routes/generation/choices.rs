//! How a generation's choices map to its prompts. A request of several prompts, each with
//! several choices (`n`, or `best_of` candidates), holds each prompt's choices together in
//! OpenAI's order of indices; a prompt counts once, with its first choice, however many choices
//! share it (as OpenAI bills `n`). The preamble, the handler and the relay all ask this type,
//! so the rule is written once.

/// The choices of a generation, `per_prompt` of each prompt, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choices {
    per_prompt: usize,
}

impl Choices {
    /// `per_prompt` choices of each prompt (at least one).
    pub fn new(per_prompt: usize) -> Self {
        Self {
            per_prompt: per_prompt.max(1),
        }
    }

    /// Choices generated per prompt.
    pub fn per_prompt(self) -> usize {
        self.per_prompt
    }

    /// The prompt that choice `choice` answers.
    pub fn prompt_of(self, choice: usize) -> usize {
        choice / self.per_prompt
    }

    /// Whether `choice` is its prompt's first: the one whose usage bills the prompt.
    pub fn bills_the_prompt(self, choice: usize) -> bool {
        choice.is_multiple_of(self.per_prompt)
    }

    /// One item per prompt out of one per choice: each prompt's first choice's.
    pub fn one_per_prompt<T>(self, per_choice: &[T]) -> impl Iterator<Item = &T> {
        per_choice.iter().step_by(self.per_prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_prompt_is_counted_once_with_its_first_choice() {
        let choices = Choices::new(3);
        let per_choice = ["a0", "a1", "a2", "b0", "b1", "b2"];
        assert_eq!(
            choices.one_per_prompt(&per_choice).collect::<Vec<_>>(),
            [&"a0", &"b0"]
        );
        let billing: Vec<usize> = (0..6).filter(|&c| choices.bills_the_prompt(c)).collect();
        assert_eq!(billing, [0, 3]);
        assert_eq!(choices.prompt_of(5), 1);
        assert_eq!(Choices::new(0).per_prompt(), 1);
    }
}
