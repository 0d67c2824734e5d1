//! `POST /mqtt/auth` and `POST /mqtt/acl` (SPEC §6): the same CONNECT and topic rules
//! the embedded broker applies, offered over HTTP to an external broker.
//!
//! The request and response shapes are EMQX's HTTP authentication and HTTP authorization
//! (version 5: a JSON or form body, HTTP 200 with `{"result": "allow" | "deny"}`), so an
//! EMQX cluster can be pointed at any service instance. Older callers that send EMQX 4's
//! `access` (`1` subscribe, `2` publish) instead of `action` are understood too.
//!
//! The rules are not restated here: CONNECT goes through [`accounts::authenticate`] and
//! [`clientid::valid_client_id`], topics through [`topics::may_publish`] and
//! [`topics::may_subscribe`] over the in-memory social graph, exactly as the embedded
//! broker's guard does — one rule book, two ways to consult it.
//!
//! Who may ask: the answers reveal whether a token is valid and who is friends with or a
//! member of what, so they are not for clients. With `mqtt_hooks.secret` set a caller must
//! send `Authorization: Bearer <secret>` (compared in constant time); with no secret only
//! callers on a loopback address are answered (a broker on the same host), everyone else
//! gets 403.
//!
//! What an external broker does not give the service, and so these endpoints cannot
//! provide: a check at delivery time (EMQX authorizes SUBSCRIBE and PUBLISH, not each
//! delivery), so a member removed from a group keeps a subscription made before until it
//! reconnects; and a revoked token closes no connection there until it reconnects or its
//! `expire_at` passes. ARCHITECTURE.md ("Scale-out") lists what else is still to build.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use mqim_broker::{clientid, topics};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{bearer, Json};
use crate::accounts;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Routes of this module (mounted at the root: the paths are SPEC §6's).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auth))
        .routes(routes!(acl))
}

/// Proof that the caller may consult the rules (see the module docs).
pub struct BrokerCaller;

impl FromRequestParts<AppState> for BrokerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let secret = st.config.mqtt_hooks.secret.as_bytes();
        if !secret.is_empty() {
            let given = bearer(parts).unwrap_or("").as_bytes();
            return if given.ct_eq(secret).into() {
                Ok(BrokerCaller)
            } else {
                Err(ApiError::unauthorized("missing or wrong mqtt_hooks secret"))
            };
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        match peer {
            Some(ip) if ip.is_loopback() || ip.to_canonical().is_loopback() => Ok(BrokerCaller),
            _ => Err(ApiError::forbidden(
                "forbidden",
                "with no mqtt_hooks.secret configured only loopback callers are answered",
            )),
        }
    }
}

/// A JSON or `application/x-www-form-urlencoded` body (EMQX sends either, as configured).
pub struct JsonOrForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            match axum::Form::<T>::from_request(req, state).await {
                Ok(axum::Form(v)) => Ok(JsonOrForm(v)),
                Err(e) => Err(ApiError::invalid("invalid_body", e.body_text())),
            }
        } else {
            Json::<T>::from_request(req, state)
                .await
                .map(|Json(v)| JsonOrForm(v))
        }
    }
}

/// The broker's question about a CONNECT.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AuthRequest {
    /// MQTT username: the account's username.
    pub username: String,
    /// MQTT password: an access token of that account.
    pub password: String,
    /// MQTT client id; when given it must be the username or `username-<1–64 of
    /// [A-Za-z0-9_]>` (SPEC §4).
    #[serde(default, alias = "client_id")]
    pub clientid: Option<String>,
}

/// The answer about a CONNECT.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthResponse {
    /// `allow` or `deny`.
    pub result: &'static str,
    /// Always false: no client of mqim may bypass the topic rules.
    pub is_superuser: bool,
    /// When allowed: the token's expiry, in seconds since the epoch (EMQX disconnects
    /// the client then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<i64>,
    /// When allowed: the account's user id (extra field, ignored by EMQX).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
}

/// POST /mqtt/auth — may this CONNECT proceed? Answers 200 with `allow` or `deny`;
/// only a malformed request gets an error status (EMQX then treats it as `ignore`).
#[utoipa::path(post, path = "/mqtt/auth", tag = "mqtt", security(("mqtt_hooks" = [])),
    request_body = AuthRequest,
    responses((status = 200, body = AuthResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn auth(
    _caller: BrokerCaller,
    State(st): State<AppState>,
    JsonOrForm(req): JsonOrForm<AuthRequest>,
) -> ApiResult<axum::Json<AuthResponse>> {
    let deny = AuthResponse {
        result: "deny",
        is_superuser: false,
        expire_at: None,
        user_id: None,
    };
    let id_ok = req
        .clientid
        .as_deref()
        .is_none_or(|c| clientid::valid_client_id(c, &req.username));
    if !id_ok {
        st.metrics.mqtt_auth_failures.inc();
        tracing::debug!(username = %req.username, "mqtt/auth: client id refused");
        return Ok(axum::Json(deny));
    }
    match accounts::authenticate(&st.db, &req.password).await? {
        Some(owner) if owner.username == req.username => Ok(axum::Json(AuthResponse {
            result: "allow",
            is_superuser: false,
            expire_at: Some(owner.expires_at.div_euclid(1000)),
            user_id: Some(owner.user_id),
        })),
        _ => {
            st.metrics.mqtt_auth_failures.inc();
            tracing::debug!(username = %req.username, "mqtt/auth: bad token");
            Ok(axum::Json(deny))
        }
    }
}

/// `action` (EMQX 5) or `access` (EMQX 4: 1 subscribe, 2 publish), as text or number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Access {
    /// A number.
    Number(i64),
    /// A string (`publish`, `subscribe`, or a number in a form body).
    Text(String),
}

/// The broker's question about a SUBSCRIBE or PUBLISH.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AclRequest {
    /// MQTT username of the client.
    pub username: String,
    /// Its client id (checked like at CONNECT when given).
    #[serde(default, alias = "client_id")]
    pub clientid: Option<String>,
    /// The topic (publish) or topic filter (subscribe).
    pub topic: String,
    /// `publish` or `subscribe`.
    #[serde(default)]
    pub action: Option<String>,
    /// EMQX 4 style instead of `action`: 1 subscribe, 2 publish.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub access: Option<Access>,
}

/// The answer about a SUBSCRIBE or PUBLISH.
#[derive(Debug, Serialize, ToSchema)]
pub struct AclResponse {
    /// `allow` or `deny`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Publish,
    Subscribe,
}

fn action_of(req: &AclRequest) -> Result<Action, ApiError> {
    let bad = || {
        ApiError::invalid(
            "invalid_body",
            "action must be \"publish\" or \"subscribe\" (or access 1 or 2)",
        )
    };
    let text = match (&req.action, &req.access) {
        (Some(a), _) => a.as_str(),
        (None, Some(Access::Number(1))) => "subscribe",
        (None, Some(Access::Number(2))) => "publish",
        (None, Some(Access::Text(t))) => match t.as_str() {
            "1" => "subscribe",
            "2" => "publish",
            t => t,
        },
        _ => return Err(bad()),
    };
    match text {
        "publish" => Ok(Action::Publish),
        "subscribe" => Ok(Action::Subscribe),
        _ => Err(bad()),
    }
}

/// POST /mqtt/acl — may this client publish on, or subscribe to, this topic? Applies
/// SPEC §4's table; answers 200 with `allow` or `deny`.
#[utoipa::path(post, path = "/mqtt/acl", tag = "mqtt", security(("mqtt_hooks" = [])),
    request_body = AclRequest,
    responses((status = 200, body = AclResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn acl(
    _caller: BrokerCaller,
    State(st): State<AppState>,
    JsonOrForm(req): JsonOrForm<AclRequest>,
) -> ApiResult<axum::Json<AclResponse>> {
    let action = action_of(&req)?;
    let allowed = allowed(&st, &req, action).await?;
    if !allowed {
        let kind = match action {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        };
        crate::metrics::Metrics::inc(&st.metrics.mqtt_denied, kind);
    }
    Ok(axum::Json(AclResponse {
        result: if allowed { "allow" } else { "deny" },
    }))
}

async fn allowed(st: &AppState, req: &AclRequest, action: Action) -> ApiResult<bool> {
    if !clientid::valid_username(&req.username)
        || req
            .clientid
            .as_deref()
            .is_some_and(|c| !clientid::valid_client_id(c, &req.username))
    {
        return Ok(false);
    }
    // Cheap refusals first: most denied topics are refused whoever asks.
    if action == Action::Publish && topics::Topic::parse(&req.topic).is_none() {
        return Ok(false);
    }
    let row = sqlx::query("SELECT id, disabled FROM users WHERE username = $1")
        .bind(&req.username)
        .fetch_optional(&st.db.pool)
        .await?;
    let Some(row) = row else { return Ok(false) };
    let disabled: i64 = row.try_get("disabled")?;
    if disabled != 0 {
        return Ok(false);
    }
    let uid: i64 = row.try_get("id")?;
    Ok(match action {
        Action::Publish => topics::may_publish(uid, &req.topic).is_some(),
        Action::Subscribe => topics::may_subscribe(uid, &req.topic, st.graph.as_ref()).is_some(),
    })
}
