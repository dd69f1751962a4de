//! The load-test harness: drives any OpenAI-compatible endpoint with a scenario and reports what
//! clients saw. It depends on none of the gateway's crates: it is only a client.

#![warn(missing_docs)]

mod arrival;
mod client;
mod plots;
mod prompts;
mod report;
mod run;
mod scenario;

// The surface other crates (and the `loadtest` binary) use; the modules stay private.
pub use plots::write_plots;
pub use report::{compare, failure_reasons, Outcome, Report, Summary};
pub use run::run;
pub use scenario::Scenario;
