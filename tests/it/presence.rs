//! Presence, devices, session policy and the admin API (issue 6).

use std::time::Duration;

use mqim_tests::http::assert_error;
use mqim_tests::{start_server, start_server_with, MqttClient, MqttError, WAIT};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token-0123456789";

/// The next presence update of `uid` seen by `watcher`.
async fn next_presence(watcher: &mut MqttClient, uid: i64) -> Value {
    let topic = format!("im/p/{uid}");
    loop {
        let r = watcher.recv().await;
        if r.topic == topic {
            return r.json();
        }
    }
}

#[tokio::test]
async fn presence_follows_all_devices_and_survives_restart() {
    let mut s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut watcher = s.mqtt(&b, Some("w")).await;
    let topic = format!("im/p/{}", a.id);
    assert_eq!(watcher.subscribe_ok(&[&topic]).await, [true]);
    // Retained: alice has never been online.
    let p = next_presence(&mut watcher, a.id).await;
    assert_eq!(p["online"], false);

    let d1 = s.mqtt(&a, Some("one")).await;
    assert_eq!(next_presence(&mut watcher, a.id).await["online"], true);
    let d2 = s.mqtt(&a, Some("two")).await;
    d1.disconnect().await;
    // Still online with one device left: no offline update.
    watcher.expect_nothing(Duration::from_millis(700)).await;
    // Abrupt socket loss of the last device: offline, with a last-seen time.
    drop(d2);
    let p = next_presence(&mut watcher, a.id).await;
    assert_eq!(p["online"], false);
    assert!(p["last_seen"].as_i64().unwrap() > 0);
    let r = s.http.get("/api/v1/me/friends/presence", &b.token).await;
    assert_eq!(r.1[0]["user_id"], a.id);
    assert_eq!(r.1[0]["online"], false);

    // A stranger may not watch.
    let c = s.register("carl").await;
    let mut sc = s.mqtt(&c, None).await;
    assert_eq!(sc.subscribe_ok(&[&topic]).await, [false]);

    // After a restart presence is rebuilt (offline, last seen kept).
    let last_seen = p["last_seen"].as_i64().unwrap();
    drop((watcher, sc));
    s.restart().await;
    let mut watcher = s.mqtt(&b, Some("w")).await;
    assert_eq!(watcher.subscribe_ok(&[&topic]).await, [true]);
    let p = next_presence(&mut watcher, a.id).await;
    assert_eq!(p["online"], false);
    assert!(p["last_seen"].as_i64().unwrap() >= last_seen - 1000, "{p}");
}

#[tokio::test]
async fn a_reconnect_burst_is_coalesced() {
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let _keep = s.mqtt(&a, Some("keep")).await;
    let mut watcher = s.mqtt(&b, None).await;
    assert_eq!(
        watcher.subscribe_ok(&[&format!("im/p/{}", a.id)]).await,
        [true]
    );
    let first = next_presence(&mut watcher, a.id).await;
    assert_eq!(first["online"], true);
    // A retained publish racing the subscription can reach the watcher twice (the
    // retained copy and the live one): the same state again is not a change.
    while let Some(r) = watcher.recv_within(Duration::from_millis(500)).await {
        let again: serde_json::Value = serde_json::from_slice(&r.payload).expect("presence JSON");
        assert_eq!(again, first, "presence changed before the burst");
    }
    // Twenty connect/disconnect cycles of another device change nothing.
    for _ in 0..20 {
        let c = s.mqtt(&a, Some("flappy")).await;
        c.disconnect().await;
    }
    watcher.expect_nothing(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn devices_list_disconnect_and_single_session_policy() {
    let s = start_server_with(&[("MQIM_MQTT__SESSION_POLICY", "single")]).await;
    let a = s.register("alice").await;
    let mut old = s.mqtt(&a, Some("phone")).await;
    let mut new = s.mqtt(&a, Some("laptop")).await;
    assert!(
        old.closed_within(WAIT).await.is_some(),
        "single policy keeps the older connection"
    );
    // Device records are written just after connect: wait (bounded) until both show.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let list = loop {
        tick.tick().await;
        let r = s.http.get("/api/v1/me/devices", &a.token).await;
        assert_eq!(r.0, 200, "{}", r.1);
        let list = r.1.as_array().unwrap().clone();
        if list
            .iter()
            .any(|d| d["client_id"] == "alice-phone" && d["online"] == false)
        {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "devices: {list:?}");
    };
    assert_eq!(list[0]["client_id"], "alice-laptop");
    assert_eq!(list[0]["online"], true);
    assert!(list[0]["connected_since"].as_i64().is_some());
    // The client's address is known (for TCP from rumqttd's accept, see mqim_broker::peer).
    let addr = list[0]["address"]
        .as_str()
        .expect("address of an online device");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(list
        .iter()
        .any(|d| d["client_id"] == "alice-phone" && d["address"].is_null()));
    assert_eq!(
        s.http
            .delete("/api/v1/me/devices/alice-laptop", &a.token)
            .await
            .0,
        204
    );
    assert!(new.closed_within(WAIT).await.is_some());
    assert_error(
        &s.http
            .delete("/api/v1/me/devices/alice-nope", &a.token)
            .await,
        404,
        "device_not_found",
    );
}

#[tokio::test]
async fn admin_api() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let h = &s.http;
    // Wrong or missing admin token; user tokens are not admin tokens.
    assert_error(
        &h.call(Method::GET, "/admin/v1/stats", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &h.get("/admin/v1/stats", "wrong").await,
        401,
        "unauthorized",
    );
    assert_error(
        &h.get("/admin/v1/stats", &a.token).await,
        401,
        "unauthorized",
    );

    let mut ca = s.mqtt(&a, Some("phone")).await;
    assert_eq!(
        ca.subscribe_ok(&[&format!("im/u/{}/in/json", a.id)]).await,
        [true]
    );
    let r = h.get("/admin/v1/stats", ADMIN).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(
        (r.1["users"].as_i64(), r.1["connections"].as_i64()),
        (Some(2), Some(1))
    );
    let r = h.get("/admin/v1/online", ADMIN).await;
    assert_eq!(r.1["users"], 1);
    assert_eq!(r.1["items"][0]["devices"][0]["client_id"], "alice-phone");
    let r = h.get("/admin/v1/users?q=bo", ADMIN).await;
    assert_eq!(r.1["items"][0]["username"], "bob");

    // A notice to everyone reaches alice now and waits for bob.
    let r = h
        .post(
            "/admin/v1/notices",
            ADMIN,
            json!({"text": "maintenance at noon"}),
        )
        .await;
    assert_eq!(r.0, 202, "{}", r.1);
    let (_, f) = ca
        .recv_frame_where(|f| matches!(f, mqim_proto::ServerFrame::Event { event, .. } if event == "SYSTEM_NOTICE"))
        .await;
    assert!(
        matches!(f, mqim_proto::ServerFrame::Event { ref data, .. } if data["text"] == "maintenance at noon")
    );
    let mut cb = s.mqtt(&b, Some("phone")).await;
    assert_eq!(
        cb.subscribe_ok(&[&format!("im/u/{}/in/json", b.id)]).await,
        [true]
    );
    cb.recv_frame_where(
        |f| matches!(f, mqim_proto::ServerFrame::Event { event, .. } if event == "SYSTEM_NOTICE"),
    )
    .await;
    // Not again on the next connect of either.
    drop(cb);
    let mut cb = s.mqtt(&b, Some("phone")).await;
    assert_eq!(
        cb.subscribe_ok(&[&format!("im/u/{}/in/json", b.id)]).await,
        [true]
    );
    cb.expect_nothing(Duration::from_millis(500)).await;
    assert_error(
        &h.post("/admin/v1/notices", ADMIN, json!({"text": ""}))
            .await,
        422,
        "invalid_text",
    );
    assert_error(
        &h.post(
            "/admin/v1/notices",
            ADMIN,
            json!({"user_id": 99999, "text": "x"}),
        )
        .await,
        404,
        "user_not_found",
    );

    // Disable: connections close, tokens and login stop working; enable restores login.
    assert_eq!(
        h.post(
            &format!("/admin/v1/users/{}/disable", a.id),
            ADMIN,
            json!({})
        )
        .await
        .0,
        204
    );
    assert!(ca.closed_within(WAIT).await.is_some());
    assert_eq!(h.get("/api/v1/me", &a.token).await.0, 401);
    assert!(matches!(
        MqttClient::connect(s.mqtt_addr, "alice", "alice", &a.token).await,
        Err(MqttError::Refused(_))
    ));
    let login = json!({"username": "alice", "password": a.password});
    assert_eq!(
        h.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(login.clone())
        )
        .await
        .0,
        401
    );
    assert_eq!(
        h.post(
            &format!("/admin/v1/users/{}/enable", a.id),
            ADMIN,
            json!({})
        )
        .await
        .0,
        204
    );
    assert_eq!(
        h.call(Method::POST, "/api/v1/auth/login", None, Some(login))
            .await
            .0,
        200
    );
    // Revoke all tokens.
    let _cb2 = s.mqtt(&b, Some("x")).await;
    let r = h
        .post(
            &format!("/admin/v1/users/{}/revoke-tokens", b.id),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(r.1["revoked"], 1);
    assert_eq!(h.get("/api/v1/me", &b.token).await.0, 401);
    assert_error(
        &h.post("/admin/v1/users/99999/disable", ADMIN, json!({}))
            .await,
        404,
        "user_not_found",
    );
    // In the OpenAPI document.
    let doc = h.call(Method::GET, "/openapi.json", None, None).await.1;
    for p in [
        "/admin/v1/stats",
        "/admin/v1/notices",
        "/admin/v1/online",
        "/api/v1/me/devices",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
}

#[tokio::test]
async fn admin_api_is_disabled_without_a_token() {
    let s = start_server_with(&[("MQIM_ADMIN_TOKEN", "")]).await;
    assert_error(
        &s.http.get("/admin/v1/stats", "").await,
        404,
        "admin_disabled",
    );
}

/// A raw MQTT 3.1.1 CONNECT with a 1 s keep-alive.
fn connect_packet(client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 1];
    for s in [client_id, user, pass] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

#[tokio::test]
async fn a_silent_device_goes_offline_after_its_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut watcher = s.mqtt(&b, None).await;
    assert_eq!(
        watcher.subscribe_ok(&[&format!("im/p/{}", a.id)]).await,
        [true]
    );
    assert_eq!(next_presence(&mut watcher, a.id).await["online"], false);
    // A device that connects with a 1 s keep-alive and then says nothing, socket open.
    let mut sock = tokio::net::TcpStream::connect(s.mqtt_addr).await.unwrap();
    sock.write_all(&connect_packet("alice-silent", "alice", &a.token))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    sock.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    assert_eq!(next_presence(&mut watcher, a.id).await["online"], true);
    // rumqttd closes it after 1.5 × keep-alive; presence follows.
    let p = next_presence(&mut watcher, a.id).await;
    assert_eq!(p["online"], false);
    drop(sock);
}

/// Device records of connects and disconnects are written in batches: many devices
/// coming and going at once (and the same device twice in a batch) all end up recorded,
/// offline, with a last-seen time no earlier than their first, and survive a restart.
#[tokio::test]
async fn many_devices_at_once_are_all_recorded() {
    let mut s = start_server().await;
    let a = s.register("alice").await;
    const N: usize = 40;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clients = futures::future::join_all((0..N).map(|i| {
        let s = &s;
        let a = &a;
        async move { s.mqtt(a, Some(&format!("d{i}"))).await }
    }))
    .await;
    for c in clients {
        c.disconnect().await;
    }
    // d0 again, at once: connect and disconnect may share a batch with the ones above.
    s.mqtt(&a, Some("d0")).await.disconnect().await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let check = |list: &Vec<Value>| {
        list.len() == N
            && list.iter().all(|d| {
                d["online"] == false
                    && d["first_seen"].as_i64().unwrap_or(0) >= t0
                    && d["last_seen"].as_i64().unwrap_or(0)
                        >= d["first_seen"].as_i64().unwrap_or(i64::MAX)
            })
    };
    loop {
        let r = s.http.get("/api/v1/me/devices", &a.token).await;
        assert_eq!(r.0, 200, "{}", r.1);
        let list = r.1.as_array().unwrap().clone();
        if check(&list) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "devices: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.restart().await;
    let r = s.http.get("/api/v1/me/devices", &a.token).await;
    let list = r.1.as_array().unwrap().clone();
    assert!(check(&list), "after restart: {list:?}");
}
