//! Accounts, tokens, profiles, configuration and operations endpoints (issue 2).

use mqim_tests::http::assert_error;
use mqim_tests::start_server;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn register_login_logout_and_bad_input() {
    let s = start_server().await;
    let h = &s.http;
    let alice = s.register("alice").await;
    assert!(alice.token.starts_with("mqim_") && alice.token.len() >= 48);

    // Duplicate username.
    let r = h
        .call(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "alice", "password": "another-pass"})),
        )
        .await;
    assert_error(&r, 409, "username_taken");
    // Invalid username and password.
    for (u, p, code) in [
        ("Al", "password1", "invalid_username"),
        ("has space", "password1", "invalid_username"),
        ("ok_name", "short", "invalid_password"),
    ] {
        let r = h
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({"username": u, "password": p})),
            )
            .await;
        assert_error(&r, 422, code);
    }
    // Missing field → 422; malformed JSON → 400.
    let r = h
        .call(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "bob"})),
        )
        .await;
    assert_error(&r, 422, "invalid_body");
    let resp = h
        .client
        .post(format!("{}/api/v1/auth/register", s.base))
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_json");

    // Wrong password and unknown user look the same.
    let wrong = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "wrong-password"})),
        )
        .await;
    let unknown = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "nobody", "password": "wrong-password"})),
        )
        .await;
    assert_error(&wrong, 401, "unauthorized");
    assert_eq!(wrong, unknown);

    // Login issues a second, independent token.
    let r = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": alice.password})),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let second = r.1["token"].as_str().unwrap().to_owned();
    assert_ne!(second, alice.token);
    assert_eq!(r.1["user_id"].as_i64(), Some(alice.id));
    assert!(r.1["expires_at"].as_i64().unwrap() > 0);

    // Tokens: missing, garbage → 401.
    assert_error(
        &h.call(Method::GET, "/api/v1/me", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(&h.get("/api/v1/me", "garbage").await, 401, "unauthorized");
    assert_error(
        &h.get(
            "/api/v1/me",
            "mqim_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await,
        401,
        "unauthorized",
    );

    // Logout revokes only the token used.
    let r = h.post("/api/v1/auth/logout", &second, json!({})).await;
    assert_eq!(r.0, 204);
    assert_error(&h.get("/api/v1/me", &second).await, 401, "unauthorized");
    assert_eq!(h.get("/api/v1/me", &alice.token).await.0, 200);
}

#[tokio::test]
async fn password_change_revokes_other_tokens() {
    let s = start_server().await;
    let h = &s.http;
    let a = s.register("carol").await;
    let other = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "carol", "password": a.password})),
        )
        .await
        .1["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h
        .put(
            "/api/v1/me/password",
            &a.token,
            json!({"current_password": "nope-nope", "new_password": "new-password-1"}),
        )
        .await;
    assert_error(&r, 401, "unauthorized");
    let r = h
        .put(
            "/api/v1/me/password",
            &a.token,
            json!({"current_password": a.password, "new_password": "short"}),
        )
        .await;
    assert_error(&r, 422, "invalid_password");
    let r = h
        .put(
            "/api/v1/me/password",
            &a.token,
            json!({"current_password": a.password, "new_password": "new-password-1"}),
        )
        .await;
    assert_eq!(r.0, 204, "{}", r.1);
    assert_eq!(
        h.get("/api/v1/me", &a.token).await.0,
        200,
        "the caller's token stays valid"
    );
    assert_error(&h.get("/api/v1/me", &other).await, 401, "unauthorized");
    let old = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "carol", "password": a.password})),
        )
        .await;
    assert_eq!(old.0, 401);
    let new = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "carol", "password": "new-password-1"})),
        )
        .await;
    assert_eq!(new.0, 200);
}

#[tokio::test]
async fn profile_search_nearby_and_users() {
    let s = start_server().await;
    let h = &s.http;
    let a = s.register("dave").await;
    let b = s.register("dana").await;
    let _c = s.register("erin").await;

    let r = h.get("/api/v1/me", &a.token).await;
    assert_eq!(r.1["username"], "dave");
    assert_eq!(r.1["nickname"], "dave");
    let r = h
        .patch(
            "/api/v1/me",
            &a.token,
            json!({"nickname": "Davey", "bio": "hi", "avatar_url": "https://x.example/a.png"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["nickname"], "Davey");
    assert_eq!(r.1["bio"], "hi");
    assert_error(
        &h.patch("/api/v1/me", &a.token, json!({"nickname": "x".repeat(65)}))
            .await,
        422,
        "invalid_field",
    );
    assert_error(
        &h.patch(
            "/api/v1/me",
            &a.token,
            json!({"avatar_url": "javascript:alert(1)"}),
        )
        .await,
        422,
        "invalid_field",
    );
    assert_error(
        &h.patch("/api/v1/me", &a.token, json!({"username": "renamed"}))
            .await,
        422,
        "invalid_body",
    );

    // Search by username prefix and nickname prefix, paginated.
    let r = h.get("/api/v1/users?q=da", &a.token).await;
    let names: Vec<_> = r.1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["dana", "dave"]);
    let r = h.get("/api/v1/users?q=da&limit=1", &a.token).await;
    assert_eq!(r.1["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.1["next_offset"], 1);
    let r = h.get("/api/v1/users?q=da&limit=1&offset=1", &a.token).await;
    assert_eq!(r.1["items"][0]["username"], "dave");
    let r = h.get("/api/v1/users?q=DAV", &a.token).await;
    assert_eq!(r.1["items"][0]["nickname"], "Davey");
    assert_error(
        &h.get("/api/v1/users?q=", &a.token).await,
        422,
        "invalid_query",
    );
    // LIKE metacharacters are literal.
    let r = h.get("/api/v1/users?q=%25", &a.token).await;
    assert_eq!(r.0, 200);
    assert!(r.1["items"].as_array().unwrap().is_empty());

    // Users by id; unknown and malformed ids are 404.
    let r = h.get(&format!("/api/v1/users/{}", b.id), &a.token).await;
    assert_eq!(r.1["username"], "dana");
    assert!(r.1.get("password_hash").is_none() && r.1.get("lat").is_none());
    assert_error(
        &h.get("/api/v1/users/999999", &a.token).await,
        404,
        "user_not_found",
    );
    assert_error(
        &h.get("/api/v1/users/abc", &a.token).await,
        404,
        "not_found",
    );

    // Nearby: needs a location; radius bounds; distance ordering.
    assert_error(
        &h.get("/api/v1/users/nearby?radius_km=5", &a.token).await,
        409,
        "no_location",
    );
    assert_error(
        &h.put(
            "/api/v1/me/location",
            &a.token,
            json!({"lat": 91.0, "lon": 0.0}),
        )
        .await,
        422,
        "invalid_location",
    );
    assert_eq!(
        h.put(
            "/api/v1/me/location",
            &a.token,
            json!({"lat": 52.5200, "lon": 13.4050})
        )
        .await
        .0,
        204
    );
    assert_eq!(
        h.put(
            "/api/v1/me/location",
            &b.token,
            json!({"lat": 52.5300, "lon": 13.4050})
        )
        .await
        .0,
        204
    );
    let r = h.get("/api/v1/users/nearby?radius_km=5", &a.token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    let list = r.1.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["username"], "dana");
    let d = list[0]["distance_km"].as_f64().unwrap();
    assert!((d - 1.11).abs() < 0.05, "{d}");
    assert!(h
        .get("/api/v1/users/nearby?radius_km=0.5", &a.token)
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());
    assert_error(
        &h.get("/api/v1/users/nearby?radius_km=0", &a.token).await,
        422,
        "invalid_radius",
    );
    assert_error(
        &h.get("/api/v1/users/nearby?radius_km=abc", &a.token).await,
        400,
        "bad_query",
    );
}

#[tokio::test]
async fn operations_endpoints_and_openapi() {
    let s = start_server().await;
    let h = &s.http;
    let r = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.0, 200);
    let r = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["database"], true);
    s.register("frank").await;
    let _ = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "frank", "password": "bad-password"})),
        )
        .await;
    let text = s.metrics_text().await;
    for needle in [
        "mqim_mqtt_connections ",
        "mqim_registrations_total 1",
        "mqim_logins_total{kind=\"failed\"} 1",
        "mqim_http_requests_total{",
        "mqim_online_users ",
        "mqim_presence_updates_total ",
        "mqim_broker_log_bytes ",
        "mqim_broker_log_topics ",
        "mqim_broker_saved_sessions 0",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    let r = h.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.0, 200);
    let paths = r.1["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/me",
        "/api/v1/me/password",
        "/api/v1/me/location",
        "/api/v1/users",
        "/api/v1/users/nearby",
        "/api/v1/users/{id}",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert_error(
        &h.call(Method::GET, "/api/v1/nope", None, None).await,
        404,
        "not_found",
    );
    assert_error(
        &h.call(Method::DELETE, "/api/v1/auth/login", None, None)
            .await,
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn data_survives_restart_and_kill() {
    let mut s = start_server().await;
    let a = s.register("grace").await;
    s.restart().await;
    let h = &s.http;
    assert_eq!(h.get("/api/v1/me", &a.token).await.1["username"], "grace");
    s.kill9().await;
    s.start_again().await;
    let h = &s.http;
    let r = h
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "grace", "password": a.password})),
        )
        .await;
    assert_eq!(r.0, 200);
}

#[tokio::test]
async fn graceful_shutdown_on_sigterm() {
    let mut s = start_server().await;
    let status = s.stop().await;
    assert!(status.success(), "{status:?}");
    assert!(s.log_text().contains("stopped"));
}

#[tokio::test]
async fn invalid_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\naddr = \"not-an-address\"\n").unwrap();
    let out = mqim_tests::command()
        .args(["--config", bad.to_str().unwrap(), "serve"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configuration") && err.contains("addr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = mqim_tests::command()
        .arg("serve")
        .env("MQIM_DATABASE_URL", "mysql://x")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));

    // `mqim migrate` on a fresh directory creates and migrates the database.
    let out = mqim_tests::command()
        .arg("migrate")
        .env("MQIM_DATA_DIR", dir.path())
        .env("MQIM_DATABASE_URL", "")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("mqim.db").exists());
}
