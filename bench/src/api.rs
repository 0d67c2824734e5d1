//! mqim's REST API, for setting up accounts, friendships and groups before a run.
//!
//! Registration costs an Argon2id hash (~20 ms of CPU), so the harness creates few
//! accounts and many devices per account where a scenario allows it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

/// A registered account.
#[derive(Debug, Clone)]
pub struct User {
    /// User id.
    pub id: i64,
    /// Username (also the client id prefix).
    pub name: String,
    /// Access token (the MQTT password).
    pub token: String,
}

impl User {
    /// MQTT credentials.
    pub fn creds(&self) -> Option<(String, String)> {
        Some((self.name.clone(), self.token.clone()))
    }

    /// Client id of device `suffix`.
    pub fn device(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// The JSON inbox topic.
    pub fn inbox(&self) -> String {
        format!("im/u/{}/in/json", self.id)
    }

    /// The JSON outbox topic.
    pub fn outbox(&self) -> String {
        format!("im/u/{}/out/json", self.id)
    }
}

/// REST client for one server.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Registered {
    user_id: i64,
    token: String,
}

#[derive(Deserialize)]
struct WithId {
    id: i64,
}

impl Api {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(Api {
            base: base.to_owned(),
            http,
        })
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path} → {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The values of unlabelled gauges or counters `names`, from one `GET /metrics`.
    pub async fn metrics<const N: usize>(&self, names: [&str; N]) -> [Option<f64>; N] {
        let text = match self.http.get(format!("{}/metrics", self.base)).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        names.map(|name| metric_value(&text, name))
    }

    /// Registers `names` (8 at a time; the server hashes 2 at a time anyway).
    pub async fn register_all(&self, names: Vec<String>) -> Result<Vec<User>> {
        stream::iter(names)
            .map(|name| async move {
                let v = self
                    .post(
                        "/auth/register",
                        None,
                        json!({"username": name, "password": format!("bench-pw-{name}")}),
                    )
                    .await?;
                let r: Registered = serde_json::from_value(v).context("register answer")?;
                Ok::<_, anyhow::Error>(User {
                    id: r.user_id,
                    name,
                    token: r.token,
                })
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Makes `a` and `b` friends (request by `a`, accepted by `b`).
    pub async fn befriend(&self, a: &User, b: &User) -> Result<()> {
        let v = self
            .post(
                "/friends/requests",
                Some(&a.token),
                json!({"user_id": b.id}),
            )
            .await?;
        let r: WithId = serde_json::from_value(v).context("friend request answer")?;
        self.post(
            &format!("/friends/requests/{}/accept", r.id),
            Some(&b.token),
            json!({}),
        )
        .await?;
        Ok(())
    }

    /// Makes each pair friends, one pair at a time: concurrent friendship
    /// transactions on SQLite failed with "database is locked" (500) before mqim's
    /// write transactions took the lock up front, and set-up is not what is measured.
    pub async fn befriend_all(&self, pairs: Vec<(User, User)>) -> Result<()> {
        for (a, b) in pairs {
            self.befriend(&a, &b).await?;
        }
        Ok(())
    }

    /// Creates an invite-only group owned by `owner` with `members` added; returns its id.
    pub async fn group(&self, owner: &User, members: &[User]) -> Result<i64> {
        let v = self
            .post(
                "/groups",
                Some(&owner.token),
                json!({"name": "bench", "join_policy": "invite_only"}),
            )
            .await?;
        let g: WithId = serde_json::from_value(v).context("group answer")?;
        let path = format!("/groups/{}/members", g.id);
        // One at a time, for the same reason as `befriend_all`.
        for m in members.iter().filter(|m| m.id != owner.id) {
            self.post(&path, Some(&owner.token), json!({"user_id": m.id}))
                .await?;
        }
        Ok(g.id)
    }
}

/// The value of the sample `name` (no labels) in Prometheus text `text`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn reads_an_unlabelled_sample() {
        let text = "# HELP mqim_heap_allocated_bytes x\n# TYPE mqim_heap_allocated_bytes gauge\n\
                    mqim_heap_allocated_bytes_total 7\nmqim_heap_allocated_bytes 1048576\n";
        assert_eq!(
            metric_value(text, "mqim_heap_allocated_bytes"),
            Some(1048576.0)
        );
        assert_eq!(metric_value(text, "mqim_missing"), None);
    }
}
