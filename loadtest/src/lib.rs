//! The load-test harness: drives any OpenAI-compatible endpoint with a scenario and reports what
//! clients saw. It depends on none of the gateway's crates: it is only a client.

#![warn(missing_docs)]

pub mod arrival;
pub mod client;
pub mod plots;
pub mod prompts;
pub mod report;
pub mod run;
pub mod scenario;
