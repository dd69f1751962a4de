//! The pooled HTTP/1.1 client every remote replica shares, and the upstream URL's checks.

use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use engine_api::{EngineError, Result};

/// A connection pool shared by every remote replica (cheap to clone).
#[derive(Clone, Debug)]
pub struct RemoteClient {
    pub(super) http: Client<HttpConnector, Full<Bytes>>,
}

impl RemoteClient {
    /// `connect_timeout` bounds each TCP connect; idle connections are kept for reuse.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Tokens are small writes; do not let Nagle hold them back (as on the gateway's side).
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { http }
    }
}

/// `http://host:port[/prefix][/v1]` → `http://host:port[/prefix]/v1`.
pub(super) fn api_base(base_url: &str) -> Result<String> {
    let trimmed = base_url.trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| EngineError::Load(format!("bad upstream URL `{base_url}`: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(EngineError::Load(format!(
            "upstream URL `{base_url}` must be http://host:port (plain HTTP on the internal network)"
        )));
    }
    Ok(match trimmed.ends_with("/v1") {
        true => trimmed.to_string(),
        false => format!("{trimmed}/v1"),
    })
}

/// An error and its causes on one line (hyper's top-level messages are terse).
pub(super) fn describe(err: impl std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
