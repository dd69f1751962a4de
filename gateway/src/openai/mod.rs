//! OpenAI's API: request and response bodies, parameter validation, the JSON extractor.

pub mod batches;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod json;
pub mod params;
pub mod response;
pub mod responses;
pub mod tools;

pub use json::JsonBody;
