//! API errors: one enum, one `IntoResponse`, so every endpoint answers
//! `{"error": "<clear message>"}` with the right status. Internal causes are logged
//! where they happen and never sent to clients.

use app::protocol::{ErrorBody, PublishError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    /// No valid session where one is needed (a private stream, an account's data), or a
    /// session token that is expired or not valid: sign in (again).
    Unauthenticated(String),
    /// Too many sign-in attempts for this name or from this address.
    TooManyAttempts(std::time::Duration),
    /// Sign-up with a name an account already has.
    NameTaken(String),
    Forbidden(String),
    NotFound(String),
    TooLarge(String),
    Unprocessable(String),
    /// The store could not take the write (or the server is stopping): try again later.
    Unavailable(String),
    /// The client publishes faster than `--publish-rate`: it may again after this long.
    RateLimited(std::time::Duration),
    /// The request body did not arrive within the deadline.
    Timeout(String),
    /// An idempotency key was used before for a different publish.
    Conflict(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NameTaken(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The stable `code` of the answer or error frame (docs/protocol.md lists them).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::TooManyAttempts(_) => "too_many_attempts",
            ApiError::NameTaken(_) => "name_taken",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unprocessable(_) => "invalid",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Timeout(_) => "timeout",
            ApiError::Conflict(_) => "idempotency_key_reused",
        }
    }

    /// `Retry-After` in whole seconds, rounded up (HTTP has no finer unit).
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited(wait) | ApiError::TooManyAttempts(wait) => {
                Some(wait.as_millis().div_ceil(1000).max(1) as u64)
            }
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthorized => {
                "publishing to this stream needs the admin token (Authorization: Bearer <token>)"
                    .into()
            }
            ApiError::TooManyAttempts(wait) => format!(
                "too many sign-in attempts; try again in {} s",
                wait.as_millis().div_ceil(1000).max(1)
            ),
            ApiError::BadRequest(m)
            | ApiError::Unauthenticated(m)
            | ApiError::NameTaken(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::Unprocessable(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::Conflict(m) => m.clone(),
            ApiError::RateLimited(wait) => format!(
                "too many publishes from this address; try again in {} ms",
                wait.as_millis().max(1)
            ),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Malformed(m) | PublishError::UnknownStream(m) => ApiError::BadRequest(m),
            PublishError::Invalid(m) => ApiError::Unprocessable(m),
            PublishError::TooLarge => ApiError::TooLarge(e.message()),
        }
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError;
        ApiError::Unavailable(match e {
            EngineError::Store => {
                "the store could not take the request; nothing was published".into()
            }
            EngineError::Closed => "the server is shutting down".into(),
            EngineError::Unavailable => {
                "the shared event log (Redis) did not answer, so this was not stored or not \
                 confirmed; retry (with the same Idempotency-Key it is stored at most once)"
                    .into()
            }
            EngineError::NotReplicated => {
                "no Redis replica confirmed this in time, or the Redis sentinels did not vouch \
                 for the primary (a failover under way, or too few sentinels reachable), so it \
                 may be lost; retry with the same Idempotency-Key (a retry of a publish that \
                 was kept is answered with its event)"
                    .into()
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::error_answered(self.code());
        let retry_after = self.retry_after_secs();
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: self.message(),
                code: self.code().into(),
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
