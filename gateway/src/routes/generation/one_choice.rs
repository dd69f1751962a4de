//! One choice's answer as pieces (text, tool calls, its end), for the APIs that answer with one
//! choice and shape it their own way (the Responses and Messages APIs): the same relay as the
//! chat endpoint's, the same hold-back of text while it may still open a tool call.

use std::collections::VecDeque;
use std::sync::Arc;

use super::respond::{Failure, Output, Relay};
use crate::openai::response::{ChoiceEnd, UsageBody};
use crate::openai::tools::{ToolCall, ToolSpec};

/// What the client hears of its choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Generated text (never empty).
    Text(String),
    /// The answer is these calls (whole: they are read once the choice ends).
    Calls(Vec<ToolCall>),
    /// The choice ended.
    End(ChoiceEnd),
}

/// The answer, whole.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeAnswer {
    /// Its text (empty when it is calls).
    pub text: String,
    /// Its calls, if it is calls.
    pub calls: Option<Vec<ToolCall>>,
    /// Why it ended.
    pub end: ChoiceEnd,
    /// Its usage, once committed to the ledger.
    pub usage: UsageBody,
}

/// A one-choice relay, read as pieces.
pub struct OneChoice {
    relay: Relay,
    tools: Option<Arc<ToolSpec>>,
    /// The text held back while it may still open a call (`None` once it is content).
    held: Option<String>,
    ready: VecDeque<Piece>,
}

impl OneChoice {
    /// Reads `relay` (one choice) with the request's `tools`.
    pub fn new(relay: Relay, tools: Option<Arc<ToolSpec>>) -> Self {
        let held = tools
            .as_ref()
            .filter(|t| t.may_open_call(""))
            .map(|_| String::new());
        Self {
            relay,
            tools,
            held,
            ready: VecDeque::new(),
        }
    }

    /// The next piece; `Ok(None)` after the end. A failure has settled the account.
    pub async fn next(&mut self) -> Result<Option<Piece>, Failure> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Ok(Some(piece));
            }
            match self.relay.next().await? {
                None => return Ok(None),
                Some(Output::Text { text, .. }) => match &mut self.held {
                    Some(holding) => {
                        holding.push_str(&text);
                        let may_call = self
                            .tools
                            .as_ref()
                            .is_some_and(|t| t.may_open_call(holding));
                        if !may_call {
                            let text = std::mem::take(holding);
                            self.held = None;
                            if !text.is_empty() {
                                return Ok(Some(Piece::Text(text)));
                            }
                        }
                    }
                    None if text.is_empty() => {}
                    None => return Ok(Some(Piece::Text(text))),
                },
                Some(Output::Finished { reason, .. }) => {
                    let mut end = ChoiceEnd::Engine(reason);
                    if let Some(holding) = self.held.take() {
                        match self.tools.as_ref().and_then(|t| t.parse(&holding)) {
                            Some(calls) => {
                                self.ready.push_back(Piece::Calls(calls));
                                end = ChoiceEnd::ToolCalls;
                            }
                            None if holding.is_empty() => {}
                            None => self.ready.push_back(Piece::Text(holding)),
                        }
                    }
                    self.ready.push_back(Piece::End(end));
                }
            }
        }
    }

    /// The usage, once the record is committed to the ledger (after the last piece).
    pub async fn complete(self) -> UsageBody {
        self.relay.complete().await
    }

    /// Reads the whole answer; a failure has settled the account.
    pub async fn whole(mut self) -> Result<WholeAnswer, Failure> {
        let mut text = String::new();
        let mut calls = None;
        let mut end = ChoiceEnd::Engine(engine_api::FinishReason::Stop);
        while let Some(piece) = self.next().await? {
            match piece {
                Piece::Text(t) => text.push_str(&t),
                Piece::Calls(c) => calls = Some(c),
                Piece::End(e) => end = e,
            }
        }
        let usage = self.complete().await;
        Ok(WholeAnswer {
            text,
            calls,
            end,
            usage,
        })
    }
}
