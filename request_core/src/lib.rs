//! The request core: continuous batching over a paged KV cache, knowing no model.
//!
//! Data flow: a [`Job`] comes in through a [`CoreHandle`] and waits as a [`Sequence`]; each step
//! the [`Scheduler`] plans (classes highest first, fair share across tenants, preemption when
//! blocks run out, `plan`/`admit`/`caps`/`preempt`), the [`block_pool`] hands out KV blocks and
//! keeps the prefix cache, the [`ModelRunner`] runs the planned chunks and samples, and each
//! sequence streams its token ([`step_loop`]). The runner is the only thing that knows a model:
//! the local engine's runs our kernels or candle; the tests' fake runner writes token ids into
//! a map of KV slots and reads them back.

#![warn(missing_docs)]

pub mod block_pool;
pub mod config;
pub mod runner;
pub mod scheduler;
pub mod sequence;
pub mod step_loop;

pub use block_pool::{BlockHash, BlockId, BlockTable};
pub use config::CoreConfig;
pub use runner::{ChunkInput, ModelRunner, PausePoint, Progress, StepInput};
pub use scheduler::Scheduler;
pub use sequence::{AdapterSlot, Sampled, Sequence, SequenceId};
pub use step_loop::{num_blocks, ChunkRecord, CoreHandle, Job, RequestCore, StepRecord};
