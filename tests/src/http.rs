//! A small JSON-over-HTTP client for tests.

use reqwest::Method;
use serde_json::Value;

/// An account created for a test.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Password used at registration.
    pub password: String,
    /// Bearer token.
    pub token: String,
}

/// HTTP client bound to a server's base URL.
#[derive(Debug, Clone)]
pub struct Http {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The reqwest client.
    pub client: reqwest::Client,
}

impl Http {
    /// A client for `base`.
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request; returns status and JSON body (`Value::Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// POST JSON with a token.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// PUT JSON with a token.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// PATCH JSON with a token.
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// DELETE with a token.
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// `from` asks user `to` to be friends (`POST /api/v1/friends/requests`); the raw
    /// response.
    pub async fn ask_friend(&self, from: &TestUser, to: i64) -> (u16, Value) {
        self.post(
            "/api/v1/friends/requests",
            &from.token,
            serde_json::json!({ "user_id": to }),
        )
        .await
    }

    /// Registers `username` with password `password-<username>`; panics unless 201.
    pub async fn register(&self, username: &str) -> TestUser {
        let password = format!("password-{username}");
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(serde_json::json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, 201, "register {username}: {body}");
        TestUser {
            id: body["user_id"].as_i64().unwrap(),
            username: username.to_owned(),
            password,
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }
}

/// Asserts an error response: the status and the SPEC §2 body with `code`.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "unexpected status, body {}", resp.1);
    assert_eq!(
        resp.1["error"]["code"].as_str(),
        Some(code),
        "unexpected error body {}",
        resp.1
    );
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {}",
        resp.1
    );
}
