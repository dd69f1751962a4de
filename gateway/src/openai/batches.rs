//! The Files and Batch APIs' shapes: a batch input file checked line by line (every error names
//! its line), the `file` and `batch` objects, and the lines of output and error files.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The endpoints a batch line may call.
pub const BATCH_ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];

/// The longest `custom_id`.
const MAX_CUSTOM_ID: usize = 256;

/// One request of a batch input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchLine {
    /// The client's id of the line, unique in its file.
    pub custom_id: String,
    /// `POST`.
    pub method: String,
    /// One of [`BATCH_ENDPOINTS`].
    pub url: String,
    /// The request's body, as the endpoint takes it.
    pub body: Value,
}

/// Reads a batch input file: one JSON object per non-empty line, each a [`BatchLine`] with a
/// unique `custom_id`, `POST` to a supported endpoint, a `body` object naming a `model` and
/// not streamed; at most `max_lines`. The first fault is a 400 that names its line (1-based).
pub fn parse_batch_input(text: &str, max_lines: usize) -> Result<Vec<BatchLine>, ApiError> {
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    for (number, raw) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if raw.is_empty() {
            continue;
        }
        let fault = |message: String| {
            ApiError::invalid_param("file", format!("Line {number}: {message}"))
                .with_code("invalid_batch_line")
        };
        if lines.len() == max_lines {
            return Err(fault(format!(
                "a batch file may hold at most {max_lines} requests."
            )));
        }
        let line: BatchLine = serde_json::from_str(raw).map_err(|e| {
            fault(format!(
                "not a batch request ({e}); each line is {{\"custom_id\", \"method\", \"url\", \"body\"}}."
            ))
        })?;
        if line.custom_id.is_empty() || line.custom_id.len() > MAX_CUSTOM_ID {
            return Err(fault(format!(
                "`custom_id` must be 1 to {MAX_CUSTOM_ID} bytes."
            )));
        }
        if !seen.insert(line.custom_id.clone()) {
            return Err(fault(format!(
                "`custom_id` `{}` appears twice; each line's must be unique.",
                line.custom_id
            )));
        }
        if line.method != "POST" {
            return Err(fault(format!(
                "`method` must be `POST`, not `{}`.",
                line.method
            )));
        }
        if !BATCH_ENDPOINTS.contains(&line.url.as_str()) {
            return Err(fault(format!(
                "`url` `{}` is not an endpoint batches can call; expected one of {}.",
                line.url,
                BATCH_ENDPOINTS.join(", ")
            )));
        }
        if !line.body.is_object() || !line.body["model"].is_string() {
            return Err(fault("`body` must be an object naming a `model`.".into()));
        }
        if line.body["stream"] == json!(true) {
            return Err(fault("a batch request cannot be streamed.".into()));
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return Err(
            ApiError::invalid_param("file", "The file holds no requests.")
                .with_code("invalid_batch_line"),
        );
    }
    Ok(lines)
}

/// A stored file: its `file` object's fields and its content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    /// `file-...`.
    pub id: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Unix seconds.
    pub created_at: i64,
    /// When it is purged (Unix seconds).
    pub expires_at: i64,
    /// The name it was uploaded with.
    pub filename: String,
    /// `batch`, `batch_output`.
    pub purpose: String,
    /// The content (JSONL: UTF-8).
    pub content: String,
}

impl StoredFile {
    /// OpenAI's `file` object.
    pub fn object(&self) -> Value {
        json!({
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "expires_at": self.expires_at, "filename": self.filename, "purpose": self.purpose,
            "status": "processed",
        })
    }
}

/// A batch's states (OpenAI's).
pub mod status {
    /// Its input is being checked.
    pub const VALIDATING: &str = "validating";
    /// Its lines are running.
    pub const IN_PROGRESS: &str = "in_progress";
    /// Its output is being written.
    pub const FINALIZING: &str = "finalizing";
    /// Done: every line answered (or failed) once.
    pub const COMPLETED: &str = "completed";
    /// Its input could not be run.
    pub const FAILED: &str = "failed";
    /// Its completion window ran out first.
    pub const EXPIRED: &str = "expired";
    /// A cancel was asked for; lines in flight finish.
    pub const CANCELLING: &str = "cancelling";
    /// Cancelled.
    pub const CANCELLED: &str = "cancelled";

    /// Whether a batch in `status` still counts as open.
    pub fn is_open(status: &str) -> bool {
        [VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING].contains(&status)
    }
}

/// A stored batch: OpenAI's `batch` object, and who runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBatch {
    /// OpenAI's `batch` object, as it is now.
    pub object: Value,
    /// The key that made it: its lines run as this key (with its quotas and limits).
    pub key_id: String,
}

impl StoredBatch {
    /// The batch's status.
    pub fn status(&self) -> &str {
        self.object["status"].as_str().unwrap_or(status::FAILED)
    }

    /// The batch's id.
    pub fn id(&self) -> &str {
        self.object["id"].as_str().unwrap_or_default()
    }
}

/// A new batch's object. Times and files not yet known are absent (OpenAI's schema has no
/// `null` for them); the runner adds them as the batch moves on.
pub fn batch_object(
    id: &str,
    endpoint: &str,
    input_file_id: &str,
    completion_window: &str,
    created_at: i64,
    expires_at: i64,
    metadata: Option<Value>,
) -> Value {
    let mut object = json!({
        "id": id, "object": "batch", "endpoint": endpoint,
        "input_file_id": input_file_id, "completion_window": completion_window,
        "status": status::VALIDATING, "created_at": created_at, "expires_at": expires_at,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
    });
    if let Some(metadata) = metadata.filter(|m| !m.is_null()) {
        object["metadata"] = metadata;
    }
    object
}

/// A line's result, as output and error files hold it: the endpoint's answer (`response`) or
/// why there is none (`error`).
pub fn result_line(custom_id: &str, request_id: &str, status_code: u16, body: Value) -> Value {
    let id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
    json!({
        "id": id, "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": null,
    })
}

/// A line that did not run (the batch expired or was cancelled first).
pub fn unrun_line(custom_id: &str, code: &str, message: &str) -> Value {
    json!({
        "id": format!("batch_req_{}", uuid::Uuid::new_v4().simple()),
        "custom_id": custom_id, "response": null,
        "error": {"code": code, "message": message},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(custom_id: &str, url: &str) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": url,
               "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    #[test]
    fn a_good_file_reads_line_by_line() {
        let text = format!(
            "{}\n\n{}\n",
            line("a", "/v1/chat/completions"),
            line("b", "/v1/completions")
        );
        let lines = parse_batch_input(&text, 10).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].custom_id, "b");
    }

    #[test]
    fn every_fault_names_its_line() {
        let good = line("a", "/v1/chat/completions");
        for (bad, wanted) in [
            ("{not json".to_string(), "Line 2: not a batch request"),
            (line("a", "/v1/chat/completions"), "Line 2: `custom_id` `a` appears twice"),
            (line("b", "/v1/images/generations"), "Line 2: `url` `/v1/images/generations`"),
            (
                json!({"custom_id": "b", "method": "GET", "url": "/v1/completions", "body": {"model": "m"}}).to_string(),
                "Line 2: `method` must be `POST`",
            ),
            (
                json!({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}).to_string(),
                "Line 2: `body` must be an object naming a `model`",
            ),
            (
                json!({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "stream": true}}).to_string(),
                "Line 2: a batch request cannot be streamed",
            ),
            (line("", "/v1/completions"), "Line 2: `custom_id` must be 1 to"),
        ] {
            let err = parse_batch_input(&format!("{good}\n{bad}"), 10).unwrap_err();
            assert!(err.message.starts_with(wanted), "{} <- {bad}", err.message);
            assert_eq!(err.param.as_deref(), Some("file"));
        }
        let many = format!(
            "{good}\n{}\n{}",
            line("b", "/v1/completions"),
            line("c", "/v1/completions")
        );
        let err = parse_batch_input(&many, 2).unwrap_err();
        assert!(
            err.message
                .starts_with("Line 3: a batch file may hold at most 2"),
            "{}",
            err.message
        );
        assert!(parse_batch_input("\n\n", 2).is_err(), "an empty file");
    }
}
