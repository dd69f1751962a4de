//! The multi-tenant OpenAI-compatible gateway: HTTP and TLS, authentication, the OpenAI API,
//! and the start-up that wires engines and policies together.

#![warn(missing_docs)]

pub mod accounting;
pub mod adapters;
pub mod anthropic;
pub mod build;
pub mod config;
pub mod console;
pub mod directory;
pub mod error;
pub mod extensions;
pub mod first_request;
pub mod layers;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod paths;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod store_sync;
pub mod telemetry;
pub mod worker;
