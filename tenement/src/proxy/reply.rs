//! Answers the proxy gives itself: a short plain-text sentence naming the culprit, or the
//! same sentence as JSON when the client asks for `application/json`.

use std::time::Duration;

use bytes::Bytes;
use http::{
    header::{CONTENT_TYPE, RETRY_AFTER},
    HeaderValue, Response, StatusCode,
};

/// `Retry-After` of a 503 for an instance that is `failed` or held `stopped`: it stays so
/// until an operator acts, so clients are asked not to hammer it.
pub(crate) const RETRY_FAILED: Duration = Duration::from_secs(30);
/// `Retry-After` of a 503 for a start that failed while tenement restarts it by itself.
pub(crate) const RETRY_RESTARTING: Duration = Duration::from_secs(1);

/// How the client wants errors spelled (JSON when its `Accept` names `application/json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
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

/// 503 with `Retry-After` (whole seconds, 1 to 3600): every 503 the proxy writes has one.
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
    fn text_or_json() {
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
