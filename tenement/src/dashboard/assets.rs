//! The stylesheet and the script, compiled into the binary: no CDN, no build step.

use bytes::Bytes;
use hyper::{Response, StatusCode};

use crate::api::{
    body::Body,
    error::{ApiError, ApiResult},
};

use super::request::bytes;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

pub fn serve(file: &str) -> ApiResult<Response<Body>> {
    let (content_type, text) = match file {
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        other => return Err(ApiError::not_found(format!("no asset {other:?}"))),
    };
    // Not cached (the headers say no-store): a few kilobytes, and never stale after an upgrade.
    Ok(bytes(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    ))
}
