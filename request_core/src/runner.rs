//! The contract between the request core and a model: the core plans a step and hands it over
//! ([`StepInput`]); the runner runs it and turns each sampling row into a token ([`Sampled`]).
//! The core knows no model, no tensor and no tokenizer; the runner knows no queue, no tenant
//! and no schedule.
//!
//! Pausing is part of the contract, not a callback into the scheduler: a runner that can stop
//! between layers checks [`PausePoint::requested`] there (a load of an atomic the submitters
//! raise, and a flag the core sets), returns [`Progress::Paused`] keeping the step's state, runs
//! the core's urgent steps with [`ModelRunner::run_beside`] (other buffers, other blocks), and
//! goes on with [`ModelRunner::resume`]. A runner that cannot pause (a GPU, whose steps are
//! short) ignores the point and always answers [`Progress::Done`].

use std::sync::atomic::{AtomicU8, Ordering};

use engine_api::EngineError;
use policies::Priority;

use crate::block_pool::BlockTable;
use crate::sequence::{AdapterSlot, Sampled, SequenceId};

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInput {
    /// The low-rank adapter its projections add, if any (the runner's numbering: the core only
    /// carries it).
    pub adapter: Option<AdapterSlot>,
    /// The sequence.
    pub sequence: SequenceId,
    /// Its tokens to run; the first goes at position `table.len`.
    pub tokens: Vec<u32>,
    /// Its blocks, which hold every position after the step (a copy: the core's own advances
    /// when the step is done).
    pub table: BlockTable,
    /// Whether its last token's logits are sampled (the end of a prompt, or a decode).
    pub samples: bool,
}

/// What a step runs: its chunks, in the order the logits' rows come back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepInput {
    /// One per planned sequence.
    pub chunks: Vec<ChunkInput>,
}

/// How far a step came.
#[derive(Debug)]
pub enum Progress<L> {
    /// It ran to its end: one row of logits per chunk that samples.
    Done(L),
    /// It stopped between layers at the pause point's request, keeping what it computed; the
    /// runner holds it until [`ModelRunner::resume`].
    Paused,
}

/// Runs the steps the core plans, over a model.
pub trait ModelRunner: Send + 'static {
    /// What the runner keeps per sequence to turn logits into tokens (sampler, grammar,
    /// streaming decoder, stop strings): made at submission, carried by the core.
    type Decoding: Send + 'static;
    /// One step's logits.
    type Logits;

    /// Starts `step`. Between two layers it may stop when `pause` asks, and answer
    /// [`Progress::Paused`].
    fn start(
        &mut self,
        step: StepInput,
        pause: &PausePoint<'_>,
    ) -> Result<Progress<Self::Logits>, EngineError>;

    /// Goes on with the paused step (there is one).
    fn resume(&mut self, pause: &PausePoint<'_>) -> Result<Progress<Self::Logits>, EngineError>;

    /// Runs a whole step while another is paused, in buffers of its own: its sequences and
    /// blocks are none of the paused step's.
    fn run_beside(&mut self, step: StepInput) -> Result<Self::Logits, EngineError>;

    /// Samples the next token of each sequence whose chunk sampled: `decodings[i]` goes with
    /// row `i` of `logits`. One result per row.
    fn sample(
        &mut self,
        logits: &Self::Logits,
        decodings: &mut [&mut Self::Decoding],
    ) -> Vec<Result<Sampled, EngineError>>;
}

/// The highest class submitted since the core last looked, raised by submitters: what a step in
/// flight reads between layers to know whether to make way.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// 0: none; else a class's rank, 1 for the lowest.
    highest: AtomicU8,
}

impl Arrivals {
    /// A request of `class` was submitted.
    pub fn arrived(&self, class: Priority) {
        self.highest.fetch_max(rank(class), Ordering::Release);
    }

    /// Forgets the arrivals seen so far (the core is about to take them from the queue).
    pub fn take(&self) {
        self.highest.store(0, Ordering::Release);
    }

    fn above(&self, class: Priority) -> bool {
        self.highest.load(Ordering::Acquire) > rank(class)
    }
}

/// A class's rank: 1 for the lowest, higher for higher classes.
fn rank(class: Priority) -> u8 {
    let from_lowest = Priority::HIGHEST_FIRST
        .iter()
        .rev()
        .position(|&c| c == class);
    from_lowest.map_or(0, |i| i as u8 + 1)
}

/// Where a step in flight may stop: when a class above the step's own has arrived, or while
/// sequences started during this step's pauses still run (each gets its token at every pause).
#[derive(Debug)]
pub struct PausePoint<'a> {
    arrivals: Option<&'a Arrivals>,
    in_flight: Priority,
    /// Set by the core while it has work beside the paused step.
    pub keep_pausing: bool,
}

impl<'a> PausePoint<'a> {
    /// A step of highest class `in_flight` that makes way for arrivals above it.
    pub fn for_arrivals(arrivals: &'a Arrivals, in_flight: Priority) -> Self {
        Self {
            arrivals: Some(arrivals),
            in_flight,
            keep_pausing: false,
        }
    }

    /// A step that never pauses.
    pub fn never() -> Self {
        Self {
            arrivals: None,
            in_flight: Priority::HIGHEST_FIRST[0],
            keep_pausing: false,
        }
    }

    /// Whether the step should stop at this point.
    pub fn requested(&self) -> bool {
        match self.arrivals {
            Some(arrivals) => self.keep_pausing || arrivals.above(self.in_flight),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_asks_to_pause_only_for_a_higher_class_or_work_beside() {
        let arrivals = Arrivals::default();
        let mut point = PausePoint::for_arrivals(&arrivals, Priority::Batch);
        assert!(!point.requested());
        arrivals.arrived(Priority::Batch);
        assert!(!point.requested(), "the same class waits for the step");
        arrivals.arrived(Priority::Interactive);
        assert!(point.requested());
        arrivals.take();
        assert!(!point.requested());
        point.keep_pausing = true;
        assert!(point.requested());
        let interactive = PausePoint::for_arrivals(&arrivals, Priority::Interactive);
        arrivals.arrived(Priority::Interactive);
        assert!(
            !interactive.requested(),
            "nothing is above the highest class"
        );
        assert!(!PausePoint::never().requested());
    }
}
