//! Accounts, profiles and tokens: the domain rules of SPEC §2 and the profile part of §3.
//!
//! HTTP handlers and the MQTT authenticator call these functions; they own validation
//! and transactions and talk to the database through runtime queries that run on both
//! backends.

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::db::{like_prefix, Db};
use crate::error::{on_unique, ApiError, ApiResult};
use crate::now_ms;
use crate::passwords::Hasher;
use crate::tokens;

/// A user as other users see them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicUser {
    /// User id.
    pub id: i64,
    /// Unique, immutable username.
    pub username: String,
    /// Display name.
    pub nickname: String,
    /// Avatar URL (may be empty).
    pub avatar_url: String,
    /// Free text.
    pub bio: String,
    /// Creation time, unix ms.
    pub created_at: i64,
}

/// The caller's own profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Me {
    /// Public part.
    #[serde(flatten)]
    pub user: PublicUser,
    /// Last reported latitude, if any.
    pub lat: Option<f64>,
    /// Last reported longitude, if any.
    pub lon: Option<f64>,
}

/// A user found nearby.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NearbyUser {
    /// Public profile.
    #[serde(flatten)]
    pub user: PublicUser,
    /// Distance from the caller, km.
    pub distance_km: f64,
}

/// A newly issued token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Bearer token for REST and MQTT password. Shown only here.
    pub token: String,
    /// Expiry, unix ms.
    pub expires_at: i64,
}

/// The identity a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// Token id (for revocation of its connections).
    pub token_id: i64,
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// When the token expires, unix ms.
    pub expires_at: i64,
}

const USER_COLS: &str = "id, username, nickname, avatar_url, bio, created_at";

fn public_user(row: &sqlx::any::AnyRow) -> Result<PublicUser, sqlx::Error> {
    Ok(PublicUser {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        nickname: row.try_get("nickname")?,
        avatar_url: row.try_get("avatar_url")?,
        bio: row.try_get("bio")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Checks a username against `^[a-z0-9_]{3,32}$`.
pub fn check_username(u: &str) -> ApiResult<()> {
    if mqim_broker::clientid::valid_username(u) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_username",
            "username must be 3-32 characters of a-z, 0-9 and _",
        ))
    }
}

/// Checks a password is 8–128 characters.
pub fn check_password(p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_password",
            "password must be 8-128 characters",
        ))
    }
}

fn check_text(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(
            "invalid_field",
            format!("{field} must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// Creates an account and its first token.
///
/// # Errors
/// 422 for an invalid username, password or nickname; 409 when the username is taken.
pub async fn register(
    db: &Db,
    hasher: &Hasher,
    ttl_secs: i64,
    username: &str,
    password: &str,
    nickname: Option<&str>,
) -> ApiResult<Session> {
    check_username(username)?;
    check_password(password)?;
    let nickname = nickname.unwrap_or(username);
    check_text("nickname", nickname, 64)?;
    let taken = || ApiError::conflict("username_taken", "that username is taken");
    // Cheap pre-check so a taken name costs no Argon2 work; the unique constraint
    // still decides races.
    if sqlx::query("SELECT 1 FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&db.pool)
        .await?
        .is_some()
    {
        return Err(taken());
    }
    let phc = hasher
        .hash(password.to_owned())
        .await
        .map_err(ApiError::internal)?;
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let row = sqlx::query(
        "INSERT INTO users (username, password_hash, nickname, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING id",
    )
    .bind(username)
    .bind(&phc)
    .bind(nickname)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| on_unique(e, taken()))?;
    let user_id: i64 = row.try_get("id")?;
    let session = issue_token(&mut tx, user_id, username, ttl_secs).await?;
    tx.commit().await?;
    Ok(session)
}

async fn issue_token(
    tx: &mut crate::db::WriteTx,
    user_id: i64,
    username: &str,
    ttl_secs: i64,
) -> ApiResult<Session> {
    let token = tokens::generate();
    let now = now_ms();
    let expires_at = now + ttl_secs * 1000;
    sqlx::query(
        "INSERT INTO tokens (user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(user_id)
    .bind(tokens::hash(&token))
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(Session {
        user_id,
        username: username.to_owned(),
        token,
        expires_at,
    })
}

/// Checks a username and password and issues a token. Unknown user, wrong password and
/// disabled account all give the same 401 after the same Argon2 work.
///
/// # Errors
/// 401 as above.
pub async fn login(
    db: &Db,
    hasher: &Hasher,
    ttl_secs: i64,
    username: &str,
    password: &str,
) -> ApiResult<Session> {
    let row = if mqim_broker::clientid::valid_username(username) && password.len() <= 1024 {
        sqlx::query("SELECT id, password_hash, disabled FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&db.pool)
            .await?
    } else {
        None
    };
    let (user_id, phc, disabled) = match &row {
        Some(r) => (
            r.try_get::<i64, _>("id")?,
            Some(r.try_get::<String, _>("password_hash")?),
            r.try_get::<i64, _>("disabled")? != 0,
        ),
        None => (0, None, false),
    };
    let ok = hasher.verify(password.to_owned(), phc).await;
    if !ok || disabled {
        return Err(ApiError::unauthorized("wrong username or password"));
    }
    let mut tx = db.begin_write().await?;
    let s = issue_token(&mut tx, user_id, username, ttl_secs).await?;
    tx.commit().await?;
    Ok(s)
}

/// Resolves a bearer token to its owner: it must exist, be unrevoked, unexpired, and
/// belong to an enabled account.
///
/// # Errors
/// Only database errors; an unusable token is `Ok(None)`.
pub async fn authenticate(db: &Db, token: &str) -> Result<Option<TokenOwner>, sqlx::Error> {
    if !tokens::well_formed(token) {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT t.id, t.user_id, t.expires_at, u.username, u.disabled \
         FROM tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(tokens::hash(token))
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let expires_at: i64 = row.try_get("expires_at")?;
    let disabled: i64 = row.try_get("disabled")?;
    if expires_at <= now_ms() || disabled != 0 {
        return Ok(None);
    }
    Ok(Some(TokenOwner {
        token_id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        username: row.try_get("username")?,
        expires_at,
    }))
}

/// Revokes one token.
///
/// # Errors
/// Database errors.
pub async fn revoke_token(db: &Db, token_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(token_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Revokes all of a user's tokens except `keep`; returns the revoked ids.
///
/// # Errors
/// Database errors.
pub async fn revoke_all(db: &Db, user_id: i64, keep: Option<i64>) -> Result<Vec<i64>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 \
         WHERE user_id = $2 AND revoked_at IS NULL AND id <> $3 RETURNING id",
    )
    .bind(now_ms())
    .bind(user_id)
    .bind(keep.unwrap_or(-1))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// Changes the password after checking the current one; other tokens are revoked
/// (returned), the caller's stays valid.
///
/// # Errors
/// 401 for a wrong current password, 422 for an invalid new one.
pub async fn change_password(
    db: &Db,
    hasher: &Hasher,
    owner: &TokenOwner,
    current: &str,
    new: &str,
) -> ApiResult<Vec<i64>> {
    check_password(new)?;
    let phc: String = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
        .bind(owner.user_id)
        .fetch_one(&db.pool)
        .await?
        .try_get("password_hash")?;
    if !hasher.verify(current.to_owned(), Some(phc)).await {
        return Err(ApiError::unauthorized("current password is wrong"));
    }
    let phc = hasher
        .hash(new.to_owned())
        .await
        .map_err(ApiError::internal)?;
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(phc)
        .bind(now_ms())
        .bind(owner.user_id)
        .execute(&db.pool)
        .await?;
    Ok(revoke_all(db, owner.user_id, Some(owner.token_id)).await?)
}

/// A user's public profile.
///
/// # Errors
/// 404 when there is no such user.
pub async fn get_user(db: &Db, id: i64) -> ApiResult<PublicUser> {
    let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    Ok(public_user(&row)?)
}

/// The caller's profile.
///
/// # Errors
/// Database errors.
pub async fn get_me(db: &Db, id: i64) -> ApiResult<Me> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLS}, lat, lon FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    Ok(Me {
        user: public_user(&row)?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
    })
}

/// Updates nickname, avatar URL and bio (each only when given).
///
/// # Errors
/// 422 for values too long or with control characters, or an avatar URL that is not
/// http(s) or a relative `/api/v1/files/…` path.
pub async fn update_profile(
    db: &Db,
    id: i64,
    nickname: Option<&str>,
    avatar_url: Option<&str>,
    bio: Option<&str>,
) -> ApiResult<Me> {
    if let Some(n) = nickname {
        check_text("nickname", n, 64)?;
        if n.trim().is_empty() {
            return Err(ApiError::invalid(
                "invalid_field",
                "nickname must not be empty",
            ));
        }
    }
    if let Some(a) = avatar_url {
        check_text("avatar_url", a, 512)?;
        let ok = a.is_empty()
            || a.starts_with("https://")
            || a.starts_with("http://")
            || a.starts_with("/api/v1/files/");
        if !ok {
            return Err(ApiError::invalid(
                "invalid_field",
                "avatar_url must be an http(s) URL or an uploaded file path",
            ));
        }
    }
    if let Some(b) = bio {
        check_text("bio", b, 500)?;
    }
    sqlx::query(
        "UPDATE users SET nickname = COALESCE($1, nickname), avatar_url = COALESCE($2, avatar_url), \
         bio = COALESCE($3, bio), updated_at = $4 WHERE id = $5",
    )
    .bind(nickname)
    .bind(avatar_url)
    .bind(bio)
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    get_me(db, id).await
}

/// Records the caller's location.
///
/// # Errors
/// 422 for coordinates out of range.
pub async fn set_location(db: &Db, id: i64, lat: f64, lon: f64) -> ApiResult<()> {
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::invalid(
            "invalid_location",
            "lat must be within ±90 and lon within ±180",
        ));
    }
    let now = now_ms();
    sqlx::query(
        "UPDATE users SET lat = $1, lon = $2, location_at = $3, updated_at = $3 WHERE id = $4",
    )
    .bind(lat)
    .bind(lon)
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Users within `radius_km` of the caller's last location, nearest first.
///
/// # Errors
/// 422 for a radius outside (0, 1000] km; 409 when the caller has not set a location.
pub async fn nearby(db: &Db, id: i64, radius_km: f64, limit: i64) -> ApiResult<Vec<NearbyUser>> {
    if !(radius_km > 0.0 && radius_km <= 1000.0) {
        return Err(ApiError::invalid(
            "invalid_radius",
            "radius_km must be in (0, 1000]",
        ));
    }
    let me = get_me(db, id).await?;
    let (Some(lat), Some(lon)) = (me.lat, me.lon) else {
        return Err(ApiError::conflict(
            "no_location",
            "set your location with PUT /api/v1/me/location first",
        ));
    };
    // Bounding box in SQL (indexable), exact great-circle distance here.
    let dlat = radius_km / 111.0;
    let dlon = radius_km / (111.0 * lat.to_radians().cos().abs().max(0.01));
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLS}, lat, lon FROM users WHERE id <> $1 AND disabled = 0 \
         AND lat BETWEEN $2 AND $3 AND lon BETWEEN $4 AND $5 LIMIT 5000"
    ))
    .bind(id)
    .bind(lat - dlat)
    .bind(lat + dlat)
    .bind(lon - dlon)
    .bind(lon + dlon)
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let (ulat, ulon): (f64, f64) = (r.try_get("lat")?, r.try_get("lon")?);
        let d = haversine_km(lat, lon, ulat, ulon);
        if d <= radius_km {
            out.push(NearbyUser {
                user: public_user(r)?,
                distance_km: (d * 1000.0).round() / 1000.0,
            });
        }
    }
    out.sort_by(|a, b| a.distance_km.total_cmp(&b.distance_km));
    out.truncate(limit.max(0) as usize);
    Ok(out)
}

/// Users whose username or nickname starts with `q` (case-insensitive), by username.
///
/// # Errors
/// 422 for an empty or over-long query.
pub async fn search(db: &Db, q: &str, limit: i64, offset: i64) -> ApiResult<Vec<PublicUser>> {
    let q = q.trim().to_lowercase();
    if q.is_empty() || q.chars().count() > 64 {
        return Err(ApiError::invalid(
            "invalid_query",
            "q must be 1-64 characters",
        ));
    }
    let pattern = like_prefix(&q);
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLS} FROM users WHERE disabled = 0 AND \
         (username LIKE $1 ESCAPE '\\' OR lower(nickname) LIKE $1 ESCAPE '\\') \
         ORDER BY username LIMIT $2 OFFSET $3"
    ))
    .bind(pattern)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| public_user(r).map_err(ApiError::from))
        .collect()
}

/// Great-circle distance in km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    6371.0 * 2.0 * a.sqrt().atan2((1.0 - a).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let d = haversine_km(52.52, 13.405, 48.8566, 2.3522); // Berlin–Paris
        assert!((d - 878.0).abs() < 5.0, "{d}");
        assert!(haversine_km(1.0, 1.0, 1.0, 1.0) < 1e-9);
    }

    #[test]
    fn validation() {
        assert!(check_username("alice_01").is_ok());
        assert!(check_username("Al").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
