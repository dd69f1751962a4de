//! `POST /v1/chat/completions` and `POST /v1/completions`. Both pass the same three stages:
//!
//! 1. [`preamble`] (a layer on each route, before admission): reads the body once, checks the
//!    model (404, 403, 503) and the parameters (400), renders and sizes each prompt, and leaves
//!    the prepared request and its [`crate::extensions::RequestCost`] for admission;
//! 2. quota admission (`layers::admission`);
//! 3. [`handlers::generate`]: submits to the model's router and answers through [`respond`], one
//!    loop over the engine's token events for both the JSON body and the SSE stream.

pub mod choices;
pub mod handlers;
pub mod preamble;
pub mod respond;

pub use handlers::generate;
pub use preamble::{prepare, PreambleState};
