//! `POST /mqtt/auth` and `POST /mqtt/acl` (SPEC §6), called the way an EMQX cluster's
//! HTTP authentication and authorization call them: JSON or form bodies, answers 200
//! with `{"result": "allow" | "deny"}`. The rules must be the same ones the embedded
//! broker applies (acl.rs, groups.rs, friends.rs test those over MQTT).

use mqim_tests::http::assert_error;
use mqim_tests::{start_server, start_server_with, Server, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

/// Posts `body` as JSON to `path`, with `secret` as bearer token when given.
async fn hook(s: &Server, path: &str, secret: Option<&str>, body: Value) -> (u16, Value) {
    s.http.call(Method::POST, path, secret, Some(body)).await
}

/// The `result` of an allowed-or-denied answer (asserting the 200).
async fn result(s: &Server, path: &str, body: Value) -> String {
    let (status, b) = hook(s, path, None, body.clone()).await;
    assert_eq!(status, 200, "{path} {body}: {b}");
    b["result"].as_str().unwrap_or_default().to_owned()
}

async fn acl(s: &Server, u: &TestUser, action: &str, topic: &str) -> String {
    result(
        s,
        "/mqtt/acl",
        json!({"username": u.username, "clientid": format!("{}-phone", u.username),
               "topic": topic, "action": action}),
    )
    .await
}

#[tokio::test]
async fn auth_allows_exactly_a_valid_token_with_its_username_and_a_valid_client_id() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let auth = |username: &str, password: &str, clientid: &str| json!({"username": username, "password": password, "clientid": clientid});

    let (status, ok) = hook(
        &s,
        "/mqtt/auth",
        None,
        auth("alice", &a.token, "alice-phone"),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["result"], "allow");
    assert_eq!(ok["is_superuser"], false);
    assert_eq!(ok["user_id"], a.id);
    // expire_at is the token's expiry in seconds: about 30 days from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = ok["expire_at"].as_i64().unwrap();
    assert!(
        (exp - now - 30 * 86_400).abs() < 120,
        "expire_at {exp}, now {now}"
    );
    // Without a client id (EMQX's default body has none), the token decides.
    assert_eq!(
        result(
            &s,
            "/mqtt/auth",
            json!({"username": "alice", "password": a.token})
        )
        .await,
        "allow"
    );

    for (body, why) in [
        (auth("alice", &b.token, "alice"), "bob's token"),
        (auth("bob", &a.token, "bob"), "alice's token as bob"),
        (auth("alice", "not-a-token", "alice"), "garbage"),
        (auth("alice", "", "alice"), "empty password"),
        (auth("alice", &a.token, "bob"), "someone else's client id"),
        (auth("alice", &a.token, "alice-"), "empty device suffix"),
        (auth("alice", &a.token, "alice-a/b"), "slash in client id"),
        (auth("alice", &a.token, "alice-#"), "wildcard in client id"),
        (auth("nobody", &a.token, "nobody"), "unknown user"),
    ] {
        let (status, r) = hook(&s, "/mqtt/auth", None, body).await;
        assert_eq!(
            (status, r["result"].as_str()),
            (200, Some("deny")),
            "{why}: {r}"
        );
        assert!(r.get("user_id").is_none(), "{why}: {r}");
    }

    // A revoked token is denied at once, like on MQTT and REST.
    let (status, _) = s
        .http
        .call(Method::POST, "/api/v1/auth/logout", Some(&a.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        result(&s, "/mqtt/auth", auth("alice", &a.token, "alice")).await,
        "deny"
    );
    // So is every token of a disabled user.
    let (status, _) = s
        .http
        .call(
            Method::POST,
            &format!("/admin/v1/users/{}/disable", b.id),
            Some("test-admin-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        result(&s, "/mqtt/auth", auth("bob", &b.token, "bob")).await,
        "deny"
    );
}

#[tokio::test]
async fn auth_and_acl_accept_form_bodies_and_refuse_malformed_ones_clearly() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let form = |path: &str, fields: &[(&str, String)]| {
        s.http
            .client
            .post(format!("{}{path}", s.base))
            .form(fields)
            .send()
    };
    let r = form(
        "/mqtt/auth",
        &[
            ("username", "alice".into()),
            ("password", a.token.clone()),
            ("clientid", "alice-x".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], "allow");
    // EMQX 4's form body: access=2 is publish, access=1 subscribe.
    for (access, topic, expect) in [
        ("2", format!("im/u/{}/out/json", a.id), "allow"),
        ("1", format!("im/u/{}/out/json", a.id), "deny"),
        ("1", format!("im/u/{}/in/+", a.id), "allow"),
    ] {
        let r = form(
            "/mqtt/acl",
            &[
                ("username", "alice".into()),
                ("topic", topic.clone()),
                ("access", access.into()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{access} {topic}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["result"],
            expect,
            "{access} {topic}"
        );
    }
    // JSON numbers for access work as well.
    assert_eq!(
        result(
            &s,
            "/mqtt/acl",
            json!({"username": "alice", "topic": format!("im/u/{}/out/pb", a.id), "access": 2})
        )
        .await,
        "allow"
    );

    // Malformed requests: a clear 4xx with the error body, never a 500.
    let bad = hook(
        &s,
        "/mqtt/acl",
        None,
        json!({"username": "alice", "topic": "x"}),
    )
    .await;
    assert_error(&bad, 422, "invalid_body");
    let bad = hook(
        &s,
        "/mqtt/acl",
        None,
        json!({"username": "alice", "topic": "x", "action": "delete"}),
    )
    .await;
    assert_error(&bad, 422, "invalid_body");
    let bad = hook(&s, "/mqtt/auth", None, json!({"username": "alice"})).await;
    assert_error(&bad, 422, "invalid_body");
    let r = s
        .http
        .client
        .post(format!("{}/mqtt/auth", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "bad_json"
    );
    // On a client of its own: the server answers 413 without reading the body and
    // closes that connection, which a shared pool could hand to the next request.
    let r = reqwest::Client::new()
        .post(format!("{}/mqtt/auth", s.base))
        .header("content-type", "application/json")
        .body(vec![b'x'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The server is fine afterwards.
    assert_eq!(
        result(
            &s,
            "/mqtt/auth",
            json!({"username": "alice", "password": a.token})
        )
        .await,
        "allow"
    );
}

#[tokio::test]
async fn acl_applies_the_topic_table_of_spec_section_4() {
    let s = start_server().await;
    let h = &s.http;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let c = s.register("carol").await;
    s.befriend(&a, &b).await;
    let g = h
        .post(
            "/api/v1/groups",
            &a.token,
            json!({"name": "Team", "join_policy": "invite_only"}),
        )
        .await;
    assert_eq!(g.0, 201, "{}", g.1);
    let gid = g.1["id"].as_i64().unwrap();
    let r = h
        .post(
            &format!("/api/v1/groups/{gid}/members"),
            &a.token,
            json!({"user_id": b.id}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let (ai, bi, ci) = (a.id, b.id, c.id);

    let cases: Vec<(&TestUser, &str, String, &str)> = vec![
        // Publish: one's own outbox only.
        (&a, "publish", format!("im/u/{ai}/out/json"), "allow"),
        (&a, "publish", format!("im/u/{ai}/out/pb"), "allow"),
        (&a, "publish", format!("im/u/{bi}/out/json"), "deny"),
        (&a, "publish", format!("im/u/{ai}/in/json"), "deny"),
        (&a, "publish", format!("im/u/{bi}/in/json"), "deny"),
        (&a, "publish", format!("im/g/{gid}/in/json"), "deny"),
        (&a, "publish", format!("im/p/{ai}"), "deny"),
        (&a, "publish", format!("im/u/{ai}/out/xml"), "deny"),
        (&a, "publish", "anything/else".into(), "deny"),
        // Subscribe: own inbox, own groups, own and friends' presence.
        (&a, "subscribe", format!("im/u/{ai}/in/json"), "allow"),
        (&a, "subscribe", format!("im/u/{ai}/in/+"), "allow"),
        (&a, "subscribe", format!("im/u/{ai}/in/#"), "allow"),
        (&a, "subscribe", format!("im/u/{bi}/in/json"), "deny"),
        (&a, "subscribe", format!("im/u/{ai}/out/json"), "deny"),
        (&b, "subscribe", format!("im/g/{gid}/in/pb"), "allow"),
        (&b, "subscribe", format!("im/g/{gid}/in/+"), "allow"),
        (&c, "subscribe", format!("im/g/{gid}/in/pb"), "deny"),
        (&a, "subscribe", format!("im/p/{ai}"), "allow"),
        (&a, "subscribe", format!("im/p/{bi}"), "allow"),
        (&a, "subscribe", format!("im/p/{ci}"), "deny"),
        (&c, "subscribe", format!("im/p/{ai}"), "deny"),
        // Wildcards never widen a grant.
        (&a, "subscribe", "#".into(), "deny"),
        (&a, "subscribe", "im/#".into(), "deny"),
        (&a, "subscribe", "im/u/+/in/+".into(), "deny"),
        (&a, "subscribe", "im/g/+/in/json".into(), "deny"),
        (&a, "subscribe", "im/p/+".into(), "deny"),
        (
            &a,
            "subscribe",
            format!("$share/x/im/u/{ai}/in/json"),
            "deny",
        ),
        (&a, "subscribe", "$SYS/#".into(), "deny"),
    ];
    for (u, action, topic, expect) in &cases {
        assert_eq!(
            acl(&s, u, action, topic).await,
            *expect,
            "{} {action} {topic}",
            u.username
        );
    }

    // Membership and friendship are consulted live: after a kick and an unfriend the
    // same questions are answered differently.
    let d = h
        .delete(&format!("/api/v1/groups/{gid}/members/{bi}"), &a.token)
        .await;
    assert_eq!(d.0, 204, "{}", d.1);
    assert_eq!(
        acl(&s, &b, "subscribe", &format!("im/g/{gid}/in/pb")).await,
        "deny"
    );
    let d = h.delete(&format!("/api/v1/friends/{bi}"), &a.token).await;
    assert_eq!(d.0, 204, "{}", d.1);
    assert_eq!(
        acl(&s, &a, "subscribe", &format!("im/p/{bi}")).await,
        "deny"
    );

    // Unknown users, hostile or foreign client ids and disabled accounts get nothing.
    let topic = format!("im/u/{ai}/in/json");
    for body in [
        json!({"username": "nobody", "topic": "im/u/99/in/json", "action": "subscribe"}),
        json!({"username": "alice", "clientid": "bob", "topic": topic, "action": "subscribe"}),
        json!({"username": "alice", "clientid": "alice-a+b", "topic": topic, "action": "subscribe"}),
        json!({"username": "Alice", "topic": topic, "action": "subscribe"}),
    ] {
        assert_eq!(
            result(&s, "/mqtt/acl", body.clone()).await,
            "deny",
            "{body}"
        );
    }
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/admin/v1/users/{ai}/disable"),
            Some("test-admin-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(acl(&s, &a, "subscribe", &topic).await, "deny");
    assert_eq!(
        acl(&s, &a, "publish", &format!("im/u/{ai}/out/json")).await,
        "deny"
    );
}

#[tokio::test]
async fn with_a_secret_configured_callers_must_present_it() {
    let secret = "hook-secret-0123456789";
    let s = start_server_with(&[("MQIM_MQTT_HOOKS__SECRET", secret)]).await;
    let a = s.register("alice").await;
    let body = json!({"username": "alice", "password": a.token});
    for wrong in [None, Some("wrong"), Some(a.token.as_str())] {
        let r = hook(&s, "/mqtt/auth", wrong, body.clone()).await;
        assert_error(&r, 401, "unauthorized");
        let r = hook(
            &s,
            "/mqtt/acl",
            wrong,
            json!({"username": "alice", "topic": "im/p/1", "action": "subscribe"}),
        )
        .await;
        assert_error(&r, 401, "unauthorized");
    }
    let r = hook(&s, "/mqtt/auth", Some(secret), body).await;
    assert_eq!(
        (r.0, r.1["result"].as_str()),
        (200, Some("allow")),
        "{}",
        r.1
    );
    // The secret never appears in the log.
    assert!(!s.log_text().contains(secret));
}

/// The first non-loopback address of this machine, if it has one.
fn external_ip() -> Option<std::net::IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks a route and a source.
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn without_a_secret_only_loopback_callers_are_answered() {
    let s = start_server_with(&[("MQIM_HTTP_ADDR", "0.0.0.0:0")]).await;
    let a = s.register("alice").await;
    let body = json!({"username": "alice", "password": a.token});
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let local = mqim_tests::Http::new(&format!("http://127.0.0.1:{port}"));
    let r = local
        .call(Method::POST, "/mqtt/auth", None, Some(body.clone()))
        .await;
    assert_eq!(
        (r.0, r.1["result"].as_str()),
        (200, Some("allow")),
        "{}",
        r.1
    );
    let Some(ip) = external_ip() else {
        eprintln!("no non-loopback address on this machine: the refusal is not exercised");
        return;
    };
    let remote = mqim_tests::Http::new(&format!("http://{ip}:{port}"));
    let r = remote
        .call(Method::POST, "/mqtt/auth", None, Some(body))
        .await;
    assert_error(&r, 403, "forbidden");
    // The REST API itself is reachable from there: only the hooks are closed.
    let (status, _) = remote.get("/api/v1/me", &a.token).await;
    assert_eq!(status, 200);
}
