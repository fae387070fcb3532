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
    Forbidden(String),
    NotFound(String),
    TooLarge(String),
    Unprocessable(String),
    /// The store could not take the write (or the server is stopping): try again later.
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthorized => {
                "publishing to this stream needs the admin token (Authorization: Bearer <token>)"
                    .into()
            }
            ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::Unprocessable(m)
            | ApiError::Unavailable(m) => m.clone(),
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

impl From<crate::publish::PublishFailed> for ApiError {
    fn from(e: crate::publish::PublishFailed) -> Self {
        ApiError::Unavailable(match e {
            crate::publish::PublishFailed::Store => {
                "the event could not be stored; nothing was published".into()
            }
            crate::publish::PublishFailed::Closed => "the server is shutting down".into(),
            crate::publish::PublishFailed::Unavailable => {
                "the shared event log (Redis) is unavailable; nothing was published, try again"
                    .into()
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.message(),
            }),
        )
            .into_response()
    }
}
