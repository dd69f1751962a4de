//! The JSON body reader: every way a body can be wrong becomes an OpenAI error (400 with the
//! offending field in `param`, 413 over the size limit) instead of axum's plain-text rejections.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use http_body_util::{BodyExt, LengthLimitError};
use serde::de::DeserializeOwned;

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
    parse(&bytes)
}

/// Parses a body, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    })?;
    from_value(&value)
}

/// Deserializes part of an already parsed body. Requests are read in several parts (the
/// endpoint's own fields, the shared sampling parameters) rather than with `serde(flatten)`,
/// which would lose the path of the field at fault.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
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
    })
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
    fn unknown_fields_are_ignored() {
        assert!(parse::<Req>(br#"{"model": "m", "frobnicate": [1,2]}"#).is_ok());
    }
}
