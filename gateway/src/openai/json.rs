//! The JSON body reader: every way a body can be wrong becomes an OpenAI error (400 with the
//! offending field in `param`, 413 over the size limit) instead of axum's plain-text rejections.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body of type `T`. Content-Type is not checked (as vLLM: `curl -d` works).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(req.into_body(), state.limits.max_body_bytes)
            .await
            .map(JsonBody)
    }
}

/// Reads a whole body and parses it. A body the body-limit layer capped at `limit` bytes and
/// that went over is a 413.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse(&read_body(body, limit).await?)
}

/// Reads a whole body. A body the body-limit layer capped at `limit` bytes and that went over
/// is a 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| {
            let e = e.into_inner();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            while let Some(c) = cause {
                if c.is::<LengthLimitError>() {
                    return ApiError::payload_too_large(limit);
                }
                cause = c.source();
            }
            ApiError::invalid_request(format!("Could not read the request body: {e}"))
        })?
        .to_bytes();
    Ok(bytes)
}

/// The body's `model`, if it names one as a string, read without the rest of the body. A body
/// that is not JSON is refused here (`invalid_json`), before anything else is said of it.
pub fn model_name(bytes: &[u8]) -> Result<Option<Cow<'_, str>>, ApiError> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    match serde_json::from_slice::<Named>(bytes) {
        Ok(named) => Ok(named.model),
        Err(e) if e.is_data() => check_syntax(bytes).map(|()| None),
        Err(e) => Err(invalid_json(&e)),
    }
}

/// Parses a body (or part of it: requests are read in several parts, the endpoint's own fields
/// and the shared sampling parameters, rather than with `serde(flatten)`, which would lose the
/// path of the field at fault), naming the field at fault. Straight from the bytes, each part
/// skipping the fields of the others: no JSON tree in between.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut reader).map_err(|err| {
        // Not JSON at all is `invalid_json`, wherever the fault is (a field of the wrong type
        // may come before it).
        if !err.inner().is_data() {
            return invalid_json(err.inner());
        }
        if let Err(not_json) = check_syntax(bytes) {
            return not_json;
        }
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = without_position(&inner);
        let path = (!path.is_empty() && path != ".").then_some(path);
        // serde reports a missing field at the object that lacks it, and names the field only
        // in its message: the field is the `param` at fault.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let param = match (path, missing) {
            (Some(path), Some(field)) => Some(format!("{path}.{field}")),
            (None, Some(field)) => Some(field.to_string()),
            (path, None) => path,
        };
        let e = ApiError::invalid_request(format!("Invalid request body: {message}"));
        match param {
            Some(param) => e.with_param(param),
            None => e,
        }
    })?;
    // Something after the value.
    reader.end().map_err(|e| invalid_json(&e))?;
    Ok(value)
}

/// Whether `bytes` are one JSON value, whatever its shape.
fn check_syntax(bytes: &[u8]) -> Result<(), ApiError> {
    serde_json::from_slice::<IgnoredAny>(bytes)
        .map(drop)
        .map_err(|e| invalid_json(&e))
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid_request(format!(
        "We could not parse the JSON body of your request: {e}"
    ))
    .with_code("invalid_json")
}

/// A field's error as serde words it, without the position in the body that the reader adds
/// (the `param` says where).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        temperature: Option<f64>,
    }

    #[test]
    fn malformed_json_is_a_400_without_param() {
        let e = parse::<Req>(b"{\"model\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("invalid_json"));
        assert_eq!(e.param, None);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse::<Req>(br#"{"model": "m", "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse::<Req>(br#"{"temperature": 1}"#).unwrap_err();
        assert!(e.message.contains("missing field `model`"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn a_missing_nested_field_is_named_with_its_path() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Message {
            role: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Chat {
            messages: Vec<Message>,
        }
        let e =
            parse::<Chat>(br#"{"messages": [{"role": "user"}, {"content": "x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn not_json_is_invalid_json_wherever_the_fault_lies() {
        // A field of the wrong type comes first; the body is still not JSON.
        let e = parse::<Req>(br#"{"model": 5, "temperature": }"#).unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
        let e = parse::<Req>(br#"{"model": "m"} trailing"#).unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
        // The field's message without the reader's position.
        let e = parse::<Req>(br#"{"model": "m", "temperature": "hot"}"#).unwrap_err();
        assert!(!e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn the_model_is_read_alone_and_a_body_that_is_not_json_stops_there() {
        let name = |body: &[u8]| model_name(body).map(|m| m.map(|m| m.into_owned()));
        assert_eq!(
            name(br#"{"x": [1], "model": "a\"b"}"#).unwrap().as_deref(),
            Some("a\"b")
        );
        assert_eq!(name(br#"{"messages": []}"#).unwrap(), None);
        assert_eq!(
            name(br#"{"model": 7}"#).unwrap(),
            None,
            "the endpoint's parse says why"
        );
        assert_eq!(
            name(br#"{"model": 7"#).unwrap_err().code,
            Some("invalid_json")
        );
        assert_eq!(name(b"[1, 2]").unwrap(), None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse::<Req>(br#"{"model": "m", "frobnicate": [1,2]}"#).is_ok());
    }
}
