//! `POST /v1/chat/completions` and `POST /v1/completions`: one pipeline in the handler
//! ([`handlers`]): read the request (`routes::pipeline`), validate and size it ([`prepare`]:
//! the body's shape, the model, the parameters, each prompt rendered and sized), admit it
//! against the tenant's quota, route it to the model's replicas, and answer through
//! [`respond`] (one loop over the router's events for both the JSON body and the SSE stream),
//! the usage account settling when the generation ends.

pub mod choices;
pub mod handlers;
pub mod one_choice;
pub mod prepare;
pub mod respond;

pub use handlers::{chat_completions, completions};
