//! Request extractors that turn every rejection into the SPEC §2 error body.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::accounts::{self, TokenOwner};
use crate::error::ApiError;
use crate::state::AppState;

/// JSON body; malformed JSON is 400 `bad_json`, well-formed but wrong fields 422
/// `invalid_body`, a missing content type 415 and an oversized body 413.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let text = e.body_text();
    match e {
        JsonRejection::JsonDataError(_) => ApiError::invalid("invalid_body", text),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("bad_json", text),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large",
        ),
        _ => ApiError::bad_request("bad_request", text),
    }
}

/// Query string; invalid values are 400 `bad_query`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("bad_query", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("bad_query", e.body_text())),
        }
    }
}

/// Path parameters; an id that is not a number is 404 (no such resource).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::not_found("not_found", e.body_text())),
        }
    }
}

/// The caller, authenticated by `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct Auth(pub TokenOwner);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <token> header")
        })?;
        match accounts::authenticate(&state.db, token).await? {
            Some(owner) => Ok(Auth(owner)),
            None => Err(ApiError::unauthorized("invalid, expired or revoked token")),
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `?limit=&offset=` of list endpoints.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::IntoParams)]
pub struct PageParams {
    /// Page size (default and maximum from `[limits]`).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

impl PageParams {
    /// `(limit, offset)` clamped to the configured bounds.
    pub fn resolve(&self, state: &AppState) -> (i64, i64) {
        let l = &state.config.limits;
        (
            self.limit.unwrap_or(l.page_size).clamp(1, l.max_page_size),
            self.offset.unwrap_or(0).max(0),
        )
    }
}

/// A page of a list.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Offset of the next page, or null at the end.
    pub next_offset: Option<i64>,
}

impl<T> Page<T> {
    /// A page from items fetched with `limit`/`offset` (a full page may have a next).
    pub fn new(items: Vec<T>, limit: i64, offset: i64) -> Page<T> {
        let next_offset = (items.len() as i64 >= limit).then_some(offset + limit);
        Page { items, next_offset }
    }
}
