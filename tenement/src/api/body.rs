//! Bodies in and out: JSON requests read with a size limit and clear errors, JSON and
//! NDJSON-stream responses.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header, Response, StatusCode,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use super::{
    error::{ApiError, ApiResult},
    types::ErrorBody,
};

/// Not `Sync`: streamed bodies hold a channel receiver, and hyper needs only `Send`.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Request bodies are small JSON objects; anything bigger is a mistake.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Reads a JSON request body. Empty or unparseable bodies are 400; well-formed JSON with
/// wrong fields or types is 422. `example` shows the caller what was expected.
pub async fn read_json<T: DeserializeOwned>(body: Incoming, example: &str) -> ApiResult<T> {
    let bytes = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|err| {
            ApiError::bad_request(format!(
                "reading the request body: {err} (at most {MAX_REQUEST_BYTES} bytes)"
            ))
        })?
        .to_bytes();
    parse_json(&bytes, example)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], example: &str) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty: expected JSON like {example}"
        )));
    }
    // Serde would also read a struct from an array (`["api:alice"]`): only objects are
    // requests.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let found = match value {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Array(_) => Some("an array"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Null => Some("null"),
        };
        if let Some(found) = found {
            return Err(ApiError::unprocessable(format!(
                "invalid request body: invalid type: {found}, expected a JSON object like {example}"
            )));
        }
    }
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        let message = format!("invalid request body: {err}; expected JSON like {example}");
        match err.classify() {
            Category::Data => ApiError::unprocessable(message),
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(message),
        }
    })
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            with_type(status, "application/json", bytes)
        }
        Err(err) => error(&ApiError::internal(format!("encoding the response: {err}"))),
    }
}

pub fn error(err: &ApiError) -> Response<Body> {
    let body = ErrorBody {
        error: err.message.clone(),
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = with_type(err.status, "application/json", bytes);
    if err.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

pub fn text(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    with_type(status, content_type, text.into_bytes())
}

fn with_type(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// A streamed response of newline-delimited JSON values: whatever the sender sends, one
/// value per line, until the sender is dropped (or the client goes away: then sends fail
/// and the producer stops).
pub fn ndjson_stream() -> (NdjsonSender, Response<Body>) {
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let bytes = receiver.recv().await?;
        Some((Ok::<_, std::io::Error>(Frame::data(bytes)), receiver))
    });
    let body = BodyExt::boxed_unsync(StreamBody::new(frames.boxed()));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    (NdjsonSender(sender), response)
}

pub struct NdjsonSender(mpsc::Sender<Bytes>);

impl NdjsonSender {
    /// Sends one value; false once the client is gone.
    pub async fn send<T: Serialize>(&self, value: &T) -> bool {
        let Ok(mut line) = serde_json::to_vec(value) else {
            return false;
        };
        line.push(b'\n');
        self.0.send(Bytes::from(line)).await.is_ok()
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.0.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::WeightRequest;

    #[test]
    fn body_errors_name_what_was_expected() {
        let example = r#"{"weight": 50}"#;
        let empty = parse_json::<WeightRequest>(b"", example).unwrap_err();
        assert_eq!(empty.status, StatusCode::BAD_REQUEST);
        assert!(empty.message.contains("empty"), "{}", empty.message);
        let syntax = parse_json::<WeightRequest>(b"{weight", example).unwrap_err();
        assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
        let wrong_type = parse_json::<WeightRequest>(br#"{"weight": "x"}"#, example).unwrap_err();
        assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            wrong_type.message.contains("invalid type"),
            "{}",
            wrong_type.message
        );
        let array = parse_json::<WeightRequest>(b"[5]", example).unwrap_err();
        assert_eq!(array.status, StatusCode::UNPROCESSABLE_ENTITY);
        let unknown = parse_json::<WeightRequest>(br#"{"wieght": 5}"#, example).unwrap_err();
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(unknown.message.contains("wieght"), "{}", unknown.message);
        assert_eq!(
            parse_json::<WeightRequest>(br#"{"weight": 5}"#, example).unwrap(),
            WeightRequest { weight: 5 }
        );
    }
}
