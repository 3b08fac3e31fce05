//! `POST /v1/reload`: the daemon reads its configuration file again and applies the
//! differences (see `reload/`). Nothing changes when the file has an error or changes a key
//! only a restart applies; the answer says which.

use hyper::{Response, StatusCode};

use super::{
    auth::Caller,
    body::{self, Body},
    error::{ApiError, ApiResult},
    types::ReloadResponse,
    Context,
};
use crate::reload::ReloadError;

pub async fn reload(context: &Context, caller: &Caller) -> ApiResult<Response<Body>> {
    caller.require_admin("reloading the configuration")?;
    let Some(reloader) = &context.api.reloader else {
        return Err(ApiError::unavailable(
            "this daemon has no configuration file to reload",
        ));
    };
    match reloader.reload().await {
        Ok(outcome) => Ok(body::json(
            StatusCode::OK,
            &ReloadResponse {
                changes: outcome.changes,
                failures: outcome.failures,
            },
        )),
        Err(err @ (ReloadError::Invalid { .. } | ReloadError::Unreadable(_))) => {
            Err(ApiError::unprocessable(err.to_string()))
        }
        Err(err @ ReloadError::NeedsRestart { .. }) => Err(ApiError::conflict(err.to_string())),
    }
}
