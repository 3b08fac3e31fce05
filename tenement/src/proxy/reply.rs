//! Answers the proxy gives itself: a short plain-text sentence naming the culprit, or the
//! same sentence as JSON when the client asks for `application/json`.

use std::time::Duration;

use bytes::Bytes;
use http::{
    header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER},
    HeaderMap, HeaderValue, Response, StatusCode,
};

/// How the client wants errors spelled, read once from its `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

impl Format {
    pub(crate) fn of(headers: &HeaderMap) -> Format {
        let json = headers.get_all(ACCEPT).iter().any(|value| {
            value
                .as_bytes()
                .windows(b"application/json".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/json"))
        });
        if json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

pub(crate) fn error(status: StatusCode, message: &str, format: Format) -> Response<Bytes> {
    let (body, content_type) = match format {
        Format::Text => (format!("{message}\n"), "text/plain; charset=utf-8"),
        Format::Json => (
            serde_json::json!({ "error": message, "status": status.as_u16() }).to_string() + "\n",
            "application/json",
        ),
    };
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// 503 with `Retry-After`, for an instance that is still starting.
pub(crate) fn retry_later(message: &str, after: Duration, format: Format) -> Response<Bytes> {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message, format);
    let seconds = after.as_secs().clamp(1, 3600);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_or_json_by_accept() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::of(&headers), Format::Text);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("text/html, Application/JSON;q=0.9"),
        );
        assert_eq!(Format::of(&headers), Format::Json);

        let text = error(
            StatusCode::NOT_FOUND,
            "no route for host a.example.com",
            Format::Text,
        );
        assert_eq!(text.body(), "no route for host a.example.com\n");
        assert_eq!(text.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");

        let json = error(StatusCode::NOT_FOUND, "say \"hi\"", Format::Json);
        let value: serde_json::Value = serde_json::from_slice(json.body()).unwrap();
        assert_eq!(value["error"], "say \"hi\"");
        assert_eq!(value["status"], 404);

        let later = retry_later("not ready", Duration::from_millis(10), Format::Text);
        assert_eq!(later.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(later.headers()[RETRY_AFTER], "1");
    }
}
