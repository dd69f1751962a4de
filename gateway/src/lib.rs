//! The multi-tenant OpenAI-compatible gateway: HTTP and TLS, authentication, the OpenAI API,
//! and the start-up that wires engines and policies together.

pub mod accounting;
pub mod auth;
pub mod config;
pub mod directory;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod rate_limit_headers;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod worker;
