//! The request-body size limit (`[server] max_body_bytes`).
//!
//! The limit travels as a request extension that axum's body extractors enforce while they read
//! (so a chunked body is cut off too, not only one announcing its length); the gateway's JSON
//! reader turns the overflow into a 413 in OpenAI's error format (`openai::json`).

use axum::extract::DefaultBodyLimit;

/// The layer setting the limit to `max_bytes`.
pub fn layer(max_bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(max_bytes)
}
