//! The client's request id, kept apart from the gateway's. A client may send its own reference
//! (`x-client-request-id`, as OpenAI's API takes it, or `x-request-id`); the gateway keeps it
//! as [`ClientRequestId`] when it is a usable one (1 to 128 visible ASCII characters; anything
//! else is dropped whole, never trimmed) and takes it off the request, so that the request id
//! layer inside always makes the gateway's own id: the key of the usage record, the id in the
//! log and the response's `x-request-id`. Two tenants sending the same id therefore never
//! share a record, and a 4,000-character header is neither stored nor logged.

use axum::extract::Request;
use axum::http::HeaderName;

use crate::extensions::ClientRequestId;

/// The longest client id kept.
pub const MAX_CLIENT_REQUEST_ID: usize = 128;

const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The layer: [`take`] on every request.
pub fn layer() -> tower::util::MapRequestLayer<fn(Request) -> Request> {
    tower::util::MapRequestLayer::new(take as fn(Request) -> Request)
}

/// Moves the client's id from the headers into a [`ClientRequestId`] extension (if usable).
pub fn take(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let sent = headers
        .remove(CLIENT_REQUEST_ID)
        .into_iter()
        .chain(headers.remove(REQUEST_ID))
        .next();
    if let Some(id) = sent.as_ref().and_then(|v| usable(v.as_bytes())) {
        request.extensions_mut().insert(ClientRequestId(id.into()));
    }
    request
}

/// The id, if it is 1 to [`MAX_CLIENT_REQUEST_ID`] visible ASCII characters.
fn usable(id: &[u8]) -> Option<&str> {
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    match id.len() {
        1..=MAX_CLIENT_REQUEST_ID if id.iter().all(visible) => std::str::from_utf8(id).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn sent(headers: &[(&str, &str)]) -> (Option<String>, bool) {
        let mut request = Request::builder().uri("/v1/models");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = take(request.body(Body::empty()).unwrap());
        let kept = request
            .extensions()
            .get::<ClientRequestId>()
            .map(|id| id.0.to_string());
        let header_left = request.headers().contains_key(REQUEST_ID)
            || request.headers().contains_key(CLIENT_REQUEST_ID);
        (kept, header_left)
    }

    #[test]
    fn a_usable_id_is_kept_apart_and_taken_off_the_request() {
        assert_eq!(
            sent(&[("x-request-id", "abc-1")]),
            (Some("abc-1".into()), false)
        );
        assert_eq!(
            sent(&[("x-client-request-id", "mine"), ("x-request-id", "other")]),
            (Some("mine".into()), false)
        );
        let longest = "a".repeat(MAX_CLIENT_REQUEST_ID);
        assert_eq!(
            sent(&[("x-request-id", &longest)]),
            (Some(longest.clone()), false)
        );
    }

    #[test]
    fn an_unusable_id_is_dropped_whole() {
        let long = "a".repeat(MAX_CLIENT_REQUEST_ID + 1);
        for bad in [long.as_str(), "has space", "tab\there", ""] {
            assert_eq!(sent(&[("x-request-id", bad)]), (None, false), "{bad:?}");
        }
    }
}
