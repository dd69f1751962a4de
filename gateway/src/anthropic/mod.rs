//! Anthropic's Messages API: its request read and translated into a chat request
//! ([`request`]), its response and stream shapes ([`response`]). Errors are rewritten into its
//! shape by `layers::anthropic_errors`, from `error::anthropic_error_body`.

pub mod request;
pub mod response;
