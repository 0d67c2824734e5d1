//! Attachments over REST (SPEC §3 "Files"): streamed multipart upload, and downloads
//! with ETag, single byte ranges (media players seek with them) and signed URLs for
//! clients that cannot send an `Authorization` header (`<img>`, `<video>`).
//!
//! The storage rules live in [`crate::files`]; this module only speaks HTTP.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Path, Query};
use crate::accounts;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::files::{self, FileMeta, FilesError, RangeRequest, URL_PREFIX};
use crate::state::AppState;

/// Room for the multipart framing and small fields around the file itself.
const MULTIPART_HEADROOM: u64 = 64 * 1024;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        // Uploads are larger than `http.max_body_bytes`; the handler applies the
        // `files.max_bytes` limit itself, while streaming.
        .layer(DefaultBodyLimit::disable())
        .routes(routes!(download))
        .routes(routes!(signed_url))
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (the part must be named `file`; other parts are ignored).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// A stored file.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    /// Download path, `/api/v1/files/<sha256>` (needs a bearer token); also what a
    /// media message's `content` should be.
    pub url: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Type sniffed from the content.
    pub mime: String,
    /// Download path with `?expires=&sig=`, usable without a token until it expires.
    pub signed_url: String,
    /// When `signed_url` expires (unix milliseconds).
    pub signed_url_expires_at: i64,
}

/// A signed download URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUrl {
    /// Download path with `?expires=&sig=`.
    pub url: String,
    /// When it expires (unix milliseconds).
    pub expires_at: i64,
}

/// `?expires=&sig=` of a signed download.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SignedParams {
    /// Expiry, unix seconds.
    pub expires: Option<i64>,
    /// Hex HMAC-SHA256 signature.
    pub sig: Option<String>,
}

fn uploaded(st: &AppState, m: FileMeta) -> UploadedFile {
    let (signed_url, expires) = st.files.signed_url(&m.sha256);
    UploadedFile {
        url: format!("{URL_PREFIX}{}", m.sha256),
        sha256: m.sha256,
        size: m.size,
        mime: m.mime,
        signed_url,
        signed_url_expires_at: expires * 1000,
    }
}

/// POST /api/v1/files — upload a file (multipart, part `file`), stored once per content.
///
/// The type is sniffed from the bytes; limits per type and the allowed types come from
/// `[files]`. Over the limit → 413, a type not allowed → 415; either way, and when the
/// upload breaks off, nothing is kept.
#[utoipa::path(post, path = "/files", tag = "files", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = UploadedFile), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upload(
    State(st): State<AppState>,
    Auth(me): Auth,
    req: Request,
) -> ApiResult<(StatusCode, axum::Json<UploadedFile>)> {
    let max = st.files.config().max_bytes;
    let cap = usize::try_from(max.saturating_add(MULTIPART_HEADROOM)).unwrap_or(usize::MAX);
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, cap)));
    let mut form = Multipart::from_request(req, &st)
        .await
        .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
    let multipart_error = move |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            FilesError::TooLarge {
                limit: max,
                mime: None,
            }
        } else {
            FilesError::Body(e.body_text())
        }
    };
    loop {
        let field = form
            .next_field()
            .await
            .map_err(multipart_error)?
            .ok_or_else(|| {
                ApiError::invalid("missing_file", "the form has no part named \"file\"")
            })?;
        if field.name() != Some("file") {
            continue;
        }
        let body = std::pin::pin!(field.map(|r| r.map_err(multipart_error)));
        let meta = st.files.store(&st.db, me.user_id, body).await?;
        return Ok((StatusCode::CREATED, axum::Json(uploaded(&st, meta))));
    }
}

/// GET /api/v1/files/{sha256} — download a file.
///
/// Authenticated by `Authorization: Bearer` or by a signed URL's `?expires=&sig=`.
/// Answers `ETag: "<sha256>"` (`If-None-Match` → 304), honours one `Range: bytes=a-b`
/// (206; 416 when it starts past the end), and streams from disk.
#[utoipa::path(get, path = "/files/{sha256}", tag = "files", security(("bearer" = []), ()),
    params(("sha256" = String, Path, description = "Lowercase hex SHA-256 of the content"), SignedParams,
        ("Range" = Option<String>, Header, description = "One range, e.g. bytes=0-1023")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 206, description = "Part of the file"), (status = 304, description = "Not modified"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
async fn download(
    State(st): State<AppState>,
    Path(sha): Path<String>,
    Query(q): Query<SignedParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize_download(&st, &headers, &sha, &q).await?;
    let not_found = || ApiError::not_found("file_not_found", "no such file");
    if !files::is_sha256(&sha) {
        return Err(not_found());
    }
    let meta = files::lookup(&st.db, &sha).await?.ok_or_else(not_found)?;
    let etag = format!("\"{sha}\"");
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, hv(&etag));
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed: the bytes behind this URL never change.
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    common.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    common.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if etag_matches(headers.get(header::IF_NONE_MATCH), &sha) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let size = u64::try_from(meta.size).unwrap_or(0);
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // If-Range with another validator: the client's partial copy is stale, send it all.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| etag_matches(Some(v), &sha));
    let range = if if_range_ok {
        files::parse_range(range_header, size)
    } else {
        RangeRequest::Full
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Part { start, end } => {
            common.insert(
                header::CONTENT_RANGE,
                hv(&format!("bytes {start}-{end}/{size}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
            return Ok(r);
        }
    };
    let mut file = match tokio::fs::File::open(st.files.path_of(&sha)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(%sha, "file row without its file on disk");
            return Err(not_found());
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(ApiError::internal)?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    common.insert(header::CONTENT_TYPE, hv(&meta.mime));
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok((status, common, Body::from_stream(stream)).into_response())
}

/// GET /api/v1/files/{sha256}/signed-url — a fresh signed download URL for a file.
#[utoipa::path(get, path = "/files/{sha256}/signed-url", tag = "files", security(("bearer" = [])),
    params(("sha256" = String, Path, description = "Lowercase hex SHA-256 of the content")),
    responses((status = 200, body = SignedUrl), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn signed_url(
    State(st): State<AppState>,
    Auth(_me): Auth,
    Path(sha): Path<String>,
) -> ApiResult<axum::Json<SignedUrl>> {
    if !files::is_sha256(&sha) || files::lookup(&st.db, &sha).await?.is_none() {
        return Err(ApiError::not_found("file_not_found", "no such file"));
    }
    let (url, expires) = st.files.signed_url(&sha);
    Ok(axum::Json(SignedUrl {
        url,
        expires_at: expires * 1000,
    }))
}

/// A bearer token wins when present (and must be valid); otherwise a signature.
async fn authorize_download(
    st: &AppState,
    headers: &HeaderMap,
    sha: &str,
    q: &SignedParams,
) -> ApiResult<()> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if let Some(token) = bearer {
        return match accounts::authenticate(&st.db, token).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::unauthorized("invalid, expired or revoked token")),
        };
    }
    match (q.expires, q.sig.as_deref()) {
        (Some(expires), Some(sig)) => {
            st.files.verify(sha, expires, sig, crate::now_ms() / 1000)?;
            Ok(())
        }
        _ => Err(ApiError::unauthorized(
            "missing Authorization: Bearer <token> header or ?expires=&sig= of a signed URL",
        )),
    }
}

/// Whether an `If-None-Match`/`If-Range` value names this file's ETag (or `*`).
fn etag_matches(v: Option<&HeaderValue>, sha: &str) -> bool {
    let Some(s) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    s.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == sha)
}

/// A header value from text we produced (hashes, numbers, sniffed types: all ASCII).
fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}
