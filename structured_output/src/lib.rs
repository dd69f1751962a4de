//! Structured output: the output a request must match (any JSON object, or JSON that validates
//! against a schema), enforced token by token with `llguidance`, the grammar engine vLLM, SGLang
//! and llama.cpp use.
//!
//! A [`Grammars`] holds llguidance's parser factory over one tokenizer (the token trie is built
//! once, at model load). Each constrained request gets its own [`Matcher`]: before each sample
//! the matcher's mask removes every token the grammar cannot take next, and the sampled token
//! is fed back. Compiling a schema into a matcher happens in the caller's thread at submission,
//! never on the scheduler's; the scheduler only computes masks (tens of microseconds per token
//! for the schemas of `tests/structured_output.rs`; `docs/benchmarks.md` has the figures).

#![warn(missing_docs)]

use std::sync::OnceLock;

use llguidance::api::{GrammarWithLexer, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokTrie, TokenId};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use engine_api::{EngineError, OutputConstraint, Result};

mod cycles;
mod runs;

pub use runs::{JsonRuns, MAX_EXPONENT_DIGITS, MAX_SIGNIFICANT_DIGITS, MAX_WHITESPACE_RUN};

/// How JSON is laid out: one space after `:` and `,`, no other whitespace (as Python's
/// `json.dumps` writes it). Free whitespace would let a sampled model at temperature 1 spend
/// its tokens on blank lines.
fn layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The grammar of `constraint`.
fn grammar_of(constraint: &OutputConstraint) -> TopLevelGrammar {
    let mut schema = match constraint {
        OutputConstraint::JsonObject => json!({"type": "object"}),
        OutputConstraint::JsonSchema(schema) => schema.clone(),
    };
    // A schema that states its own layout (llguidance's `x-guidance`) keeps it.
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(layout);
    }
    TopLevelGrammar::from_grammar(GrammarWithLexer::from_json_schema(schema))
}

/// Checks that the constraint compiles and can start an output, without a model's
/// tokenizer (over single bytes): the gateway calls this at the edge, so a bad schema is a
/// 400 whichever engine serves. A schema can compile and still describe nothing (a `$ref`
/// to itself, `anyOf`/`allOf` cycles): its first mask fails or is empty, and that is found
/// here too, not in the engine.
pub fn check(constraint: &OutputConstraint) -> Result<()> {
    if let OutputConstraint::JsonSchema(schema) = constraint {
        if let Some(at) = cycles::unproductive_cycle(schema) {
            return Err(EngineError::InvalidConstraint(format!(
                    "the schema at `{at}` refers back to itself without anything written in between (through `$ref`, `anyOf`, `allOf` or `oneOf`): it describes no finite JSON value"
                )));
        }
    }
    let mut matcher = Grammars::byte_level().matcher(constraint)?;
    let invalid =
        |e: &dyn std::fmt::Display| EngineError::InvalidConstraint(first_line(&e.to_string()));
    let first = matcher.compute_mask().map_err(|e| invalid(&e))?;
    if let Some(error) = matcher.get_error() {
        return Err(invalid(&error));
    }
    if first.is_zero() {
        return Err(EngineError::InvalidConstraint(
            "the schema admits no JSON value (a reference cycle or contradictory keywords)".into(),
        ));
    }
    Ok(())
}

/// llguidance's parser factory over one tokenizer: compiles constraints into matchers.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// A factory over a model's vocabulary as llguidance sees it (each token's bytes, special
    /// tokens marked; the local engine builds it from its tokenizer).
    pub fn over(env: &TokEnv) -> Result<Self> {
        let mut factory = ParserFactory::new_simple(env)
            .map_err(|e| EngineError::Load(format!("grammar engine: {e}")))?;
        // Errors are returned to the caller; nothing goes to stderr.
        factory.quiet();
        Ok(Self { factory })
    }

    /// The factory over single bytes, for checks that need no model.
    fn byte_level() -> &'static Grammars {
        static BYTES: OnceLock<Grammars> = OnceLock::new();
        BYTES.get_or_init(|| {
            Grammars::over(&ApproximateTokEnv::single_byte_env())
                .expect("a single-byte vocabulary builds")
        })
    }

    /// A fresh matcher for `constraint`, or why the constraint cannot be used.
    pub fn matcher(&self, constraint: &OutputConstraint) -> Result<Matcher> {
        let parser = self
            .factory
            .create_parser(grammar_of(constraint))
            .map_err(|e| EngineError::InvalidConstraint(first_line(&e.to_string())))?;
        Ok(Matcher::new(Ok(parser)))
    }
}

/// llguidance's errors carry the grammar after the first line; the first line says what is
/// wrong.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

/// A request's grammar state in the sequence being generated.
pub struct ConstraintState {
    matcher: Matcher,
    /// The vocabulary's bytes, for the bounds on numbers and whitespace.
    vocabulary: Option<TokEnv>,
    /// The bounds' view of the output so far.
    runs: JsonRuns,
    /// The tokens allowed next, when computed ahead of sampling ([`Self::prepare`]).
    allowed: Option<SimpleVob>,
}

impl ConstraintState {
    /// A state at the start of the output.
    pub fn new(matcher: Matcher) -> Self {
        Self {
            vocabulary: matcher.tok_env().ok(),
            matcher,
            runs: JsonRuns::default(),
            allowed: None,
        }
    }

    /// Computes the tokens allowed next, ahead of sampling: the request core does this for
    /// every constrained sequence of a step at once, spread over its threads.
    pub fn prepare(&mut self) -> Result<()> {
        if self.allowed.is_none() {
            let mut allowed = self
                .matcher
                .compute_mask()
                .map_err(|e| EngineError::Constraint(first_line(&e.to_string())))?;
            self.bound_runs(&mut allowed);
            self.allowed = Some(allowed);
        }
        Ok(())
    }

    /// Removes from `allowed` the tokens that would take a number or a whitespace run past
    /// its bound ([`runs`]). Should that leave nothing (a schema that demands more), the
    /// grammar's own set stands.
    fn bound_runs(&self, allowed: &mut SimpleVob) {
        let Some(vocabulary) = &self.vocabulary else {
            return;
        };
        if !self.runs.constraining() {
            return;
        }
        let mut over = Vec::new();
        allowed.iter_set_entries(|id| {
            let text = written(vocabulary, id as TokenId);
            if text.is_some_and(|bytes| !self.runs.clone().feed(bytes)) {
                over.push(id);
            }
        });
        if over.len() < allowed.num_set() {
            for id in over {
                allowed.disallow_token(id as TokenId);
            }
        }
    }

    /// `logits` with every token the grammar forbids next at minus infinity (ids past the
    /// tokenizer's vocabulary included). Built from the allowed set, which is small next to
    /// the vocabulary in most grammar states.
    pub fn mask(&mut self, logits: &[f32]) -> Result<Vec<f32>> {
        self.prepare()?;
        let allowed = self.allowed.take().expect("prepared above");
        let mut masked = vec![f32::NEG_INFINITY; logits.len()];
        allowed.iter_set_entries(|id| {
            if let Some(&logit) = logits.get(id) {
                masked[id] = logit;
            }
        });
        Ok(masked)
    }

    /// Feeds the sampled token; true when the grammar is complete and nothing may follow.
    pub fn advance(&mut self, token: u32) -> Result<bool> {
        if let Some(bytes) = self.vocabulary.as_ref().and_then(|v| written(v, token)) {
            self.runs.feed(bytes);
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Constraint(first_line(&e.to_string())))?;
        Ok(self.matcher.is_stopped())
    }
}

/// The bytes `token` writes into the output; `None` for a special token (which writes none).
fn written(vocabulary: &TokEnv, token: TokenId) -> Option<&[u8]> {
    let bytes = vocabulary.tok_trie().token(token);
    (bytes.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER)).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_schemas_are_refused_with_the_reason() {
        for schema in [
            json!({"type": "object", "properties": {"a": {"type": "strin"}}}),
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
            json!({"type": "string", "minLength": 5, "maxLength": 2}),
        ] {
            let err = check(&OutputConstraint::JsonSchema(schema.clone())).unwrap_err();
            assert!(
                matches!(err, EngineError::InvalidConstraint(ref m) if !m.is_empty()),
                "{schema}: {err:?}"
            );
        }
        check(&OutputConstraint::JsonObject).unwrap();
        check(&OutputConstraint::JsonSchema(
            json!({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}),
        ))
        .unwrap();
    }

    /// Schemas that compile but describe nothing: a `$ref` to itself, `anyOf`/`allOf` cycles.
    /// They used to pass the edge and fail in the engine (`NoExtensionBias`), counted as the
    /// replica's failure (issue 30, item 1).
    #[test]
    fn schemas_that_describe_nothing_are_refused_at_the_edge() {
        for schema in [
            json!({"$ref": "#/$defs/N", "$defs": {"N": {"$ref": "#/$defs/N"}}}),
            json!({"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/B"}]}, "B": {"anyOf": [{"$ref": "#/$defs/A"}]}}}),
            json!({"$ref": "#/$defs/A", "$defs": {"A": {"allOf": [{"$ref": "#/$defs/B"}]}, "B": {"allOf": [{"$ref": "#/$defs/A"}]}}}),
            json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/N"}}, "required": ["x"], "$defs": {"N": {"$ref": "#/$defs/N"}}}),
        ] {
            let err = check(&OutputConstraint::JsonSchema(schema.clone())).unwrap_err();
            assert!(
                matches!(err, EngineError::InvalidConstraint(ref m) if !m.is_empty()),
                "{schema}: {err:?}"
            );
        }
        // Recursion that ends (a tree) is fine.
        check(&OutputConstraint::JsonSchema(
            json!({"$ref": "#/$defs/T", "$defs": {"T": {"type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/T"}}}}}}),
        ))
        .unwrap();
    }

    #[test]
    fn a_matcher_over_bytes_accepts_only_its_language() {
        let constraint = OutputConstraint::JsonSchema(
            json!({"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": ["a"], "additionalProperties": false}),
        );
        let mut state = ConstraintState::new(Grammars::byte_level().matcher(&constraint).unwrap());
        // Single-byte vocabulary: token id = byte.
        let logits = state.mask(&[0.0f32; 256]).unwrap();
        let allowed: Vec<u8> = (0..=255u8)
            .filter(|&b| logits[b as usize].is_finite())
            .collect();
        assert_eq!(allowed, b"{");
        let mut done = false;
        for &b in br#"{"a": "x"}"# {
            done = state.advance(b as u32).unwrap();
        }
        assert!(done, "the object is complete");
    }
}
