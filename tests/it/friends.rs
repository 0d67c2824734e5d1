//! Friends over REST with live events over MQTT (issue 4), and presence topic rules
//! that follow friendship (issue 3).

use std::time::Duration;

use mqim_proto::ServerFrame;
use mqim_tests::http::assert_error;
use mqim_tests::{start_server, start_server_with, MqttClient, Server, TestUser};
use serde_json::{json, Value};

/// Connects `u` and subscribes to their inbox in `fmt` (`json` or `pb`).
pub async fn inbox(s: &Server, u: &TestUser, fmt: &str) -> MqttClient {
    let mut c = s.mqtt(u, Some(fmt)).await;
    let topic = format!("im/u/{}/in/{fmt}", u.id);
    assert_eq!(c.subscribe_ok(&[&topic]).await, [true]);
    c
}

/// Waits for the `event` frame named `name` (skipping other frames); returns its data.
pub async fn event(c: &mut MqttClient, name: &str) -> Value {
    let (_, f) = c
        .recv_frame_where(|f| matches!(f, ServerFrame::Event { event, .. } if event == name))
        .await;
    match f {
        ServerFrame::Event { data, .. } => data,
        _ => unreachable!(),
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn request_then_accept_makes_friends_on_both_sides() {
    let s = start_server().await;
    let h = &s.http;
    let (a, b) = (s.register("alice").await, s.register("bob").await);
    let mut ca = inbox(&s, &a, "pb").await;
    let mut cb = inbox(&s, &b, "json").await;

    // Not friends yet: no presence for each other.
    assert_eq!(cb.subscribe_ok(&[&format!("im/p/{}", a.id)]).await, [false]);

    let r = h
        .post(
            "/api/v1/friends/requests",
            &a.token,
            json!({"user_id": b.id, "message": "hi, it's alice"}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["state"], "pending");
    assert_eq!(r.1["direction"], "outgoing");
    assert_eq!(r.1["to"]["username"], "bob");
    let rid = r.1["id"].as_i64().unwrap();

    let invite = event(&mut cb, "FRIEND_INVITE").await;
    assert_eq!(invite["request_id"], rid);
    assert_eq!(invite["from"]["id"], a.id);
    assert_eq!(invite["from"]["username"], "alice");
    assert_eq!(invite["message"], "hi, it's alice");

    // A user who was offline finds it through REST, incoming and pending.
    let r = h
        .get(
            "/api/v1/friends/requests?direction=incoming&state=pending",
            &b.token,
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&r.1), [rid]);
    assert_eq!(r.1["items"][0]["direction"], "incoming");
    assert_eq!(r.1["items"][0]["message"], "hi, it's alice");
    let r = h
        .get("/api/v1/friends/requests?direction=outgoing", &b.token)
        .await;
    assert_eq!(ids(&r.1), Vec::<i64>::new());
    // A second request while one is pending.
    assert_error(&h.ask_friend(&a, b.id).await, 409, "request_pending");

    let r = h
        .post(
            &format!("/api/v1/friends/requests/{rid}/accept"),
            &b.token,
            json!({}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "accepted");
    let agree_b = event(&mut cb, "FRIEND_AGREE").await;
    assert_eq!(agree_b["friend"]["id"], a.id);
    // Alice subscribed in protobuf and gets the same event in that format.
    let agree_a = event(&mut ca, "FRIEND_AGREE").await;
    assert_eq!(agree_a["friend"]["id"], b.id);
    assert_eq!(agree_a["request_id"], rid);

    for (me, other) in [(&a, &b), (&b, &a)] {
        let r = h.get("/api/v1/friends", &me.token).await;
        assert_eq!(r.0, 200, "{}", r.1);
        assert_eq!(ids(&r.1), [other.id]);
        assert!(r.1["items"][0]["since"].as_i64().unwrap() > 0);
    }
    // Friends now see each other's presence.
    assert_eq!(cb.subscribe_ok(&[&format!("im/p/{}", a.id)]).await, [true]);
    assert_error(&h.ask_friend(&b, a.id).await, 409, "already_friends");
    // Answered requests cannot be answered again.
    assert_error(
        &h.post(
            &format!("/api/v1/friends/requests/{rid}/reject"),
            &b.token,
            json!({}),
        )
        .await,
        409,
        "request_not_pending",
    );
}

#[tokio::test]
async fn a_request_to_someone_who_asked_you_is_an_acceptance() {
    let s = start_server().await;
    let h = &s.http;
    let (a, b) = (s.register("alice").await, s.register("bob").await);
    let mut ca = inbox(&s, &a, "json").await;
    let r = h.ask_friend(&a, b.id).await;
    let rid = r.1["id"].as_i64().unwrap();
    let r = h.ask_friend(&b, a.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["id"], rid, "the pending request was answered");
    assert_eq!(r.1["state"], "accepted");
    assert_eq!(event(&mut ca, "FRIEND_AGREE").await["friend"]["id"], b.id);
    assert_eq!(ids(&h.get("/api/v1/friends", &a.token).await.1), [b.id]);
}

#[tokio::test]
async fn reject_and_who_may_answer() {
    let s = start_server().await;
    let h = &s.http;
    let [a, b, c] = s.register_all(["alice", "bob", "carol"]).await;
    let mut ca = inbox(&s, &a, "json").await;
    let r = h.ask_friend(&a, b.id).await;
    let rid = r.1["id"].as_i64().unwrap();
    let accept = format!("/api/v1/friends/requests/{rid}/accept");
    let reject = format!("/api/v1/friends/requests/{rid}/reject");
    // The sender cannot answer their own request, a stranger cannot see it.
    assert_error(
        &h.post(&accept, &a.token, json!({})).await,
        403,
        "not_recipient",
    );
    assert_error(
        &h.post(&accept, &c.token, json!({})).await,
        404,
        "request_not_found",
    );
    for bad in ["999999", "abc", "-1"] {
        let r = h
            .post(
                &format!("/api/v1/friends/requests/{bad}/accept"),
                &b.token,
                json!({}),
            )
            .await;
        assert_eq!(r.0, 404, "{bad}: {}", r.1);
    }

    let r = h.post(&reject, &b.token, json!({})).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "rejected");
    let ev = event(&mut ca, "FRIEND_REJECT").await;
    assert_eq!(ev["request_id"], rid);
    assert_eq!(ev["by"]["id"], b.id);
    assert_error(
        &h.post(&accept, &b.token, json!({})).await,
        409,
        "request_not_pending",
    );
    // Alice sees the outcome; they are not friends; she may ask again.
    let r = h
        .get("/api/v1/friends/requests?state=rejected", &a.token)
        .await;
    assert_eq!(ids(&r.1), [rid]);
    assert_eq!(
        ids(&h.get("/api/v1/friends", &a.token).await.1),
        Vec::<i64>::new()
    );
    let r = h.ask_friend(&a, b.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_ne!(r.1["id"], rid);
}

#[tokio::test]
async fn deleting_a_friend_tells_the_other_and_ends_presence_access() {
    let s = start_server().await;
    let h = &s.http;
    let (a, b) = (s.register("alice").await, s.register("bob").await);
    s.befriend(&a, &b).await;
    let mut cb = inbox(&s, &b, "json").await;
    let presence = format!("im/p/{}", a.id);
    assert_eq!(cb.subscribe_ok(&[&presence]).await, [true]);

    let r = h
        .delete(&format!("/api/v1/friends/{}", b.id), &a.token)
        .await;
    assert_eq!(r.0, 204, "{}", r.1);
    let ev = event(&mut cb, "FRIEND_REMOVED").await;
    assert_eq!(ev["user_id"], a.id);
    assert_eq!(ev["by"], a.id);
    for u in [&a, &b] {
        assert_eq!(
            ids(&h.get("/api/v1/friends", &u.token).await.1),
            Vec::<i64>::new()
        );
    }
    // Presence is for friends only, at once.
    assert_eq!(cb.subscribe_ok(&[&presence]).await, [false]);
    assert_error(
        &h.delete(&format!("/api/v1/friends/{}", b.id), &a.token)
            .await,
        404,
        "friend_not_found",
    );
    assert_error(
        &h.delete("/api/v1/friends/12345", &a.token).await,
        404,
        "friend_not_found",
    );
}

#[tokio::test]
async fn a_blocked_user_cannot_send_requests() {
    let s = start_server().await;
    let h = &s.http;
    let (a, b) = (s.register("alice").await, s.register("bob").await);
    let mut cb = inbox(&s, &b, "json").await;
    // Alice's pending request is canceled by Bob's block.
    let r = h.ask_friend(&a, b.id).await;
    let rid = r.1["id"].as_i64().unwrap();
    event(&mut cb, "FRIEND_INVITE").await;
    let block = format!("/api/v1/blocks/{}", a.id);
    assert_eq!(h.put(&block, &b.token, json!({})).await.0, 204);
    assert_eq!(
        h.put(&block, &b.token, json!({})).await.0,
        204,
        "idempotent"
    );
    let r = h.get("/api/v1/friends/requests", &b.token).await;
    assert_eq!(r.1["items"][0]["id"], rid);
    assert_eq!(r.1["items"][0]["state"], "canceled");
    assert_error(
        &h.post(
            &format!("/api/v1/friends/requests/{rid}/accept"),
            &b.token,
            json!({}),
        )
        .await,
        409,
        "request_not_pending",
    );

    assert_error(&h.ask_friend(&a, b.id).await, 403, "blocked");
    // Nothing reached Bob.
    cb.expect_nothing(Duration::from_millis(300)).await;
    assert_error(&h.ask_friend(&b, a.id).await, 409, "unblock_first");
    let r = h.get("/api/v1/blocks", &b.token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&r.1), [a.id]);

    assert_eq!(h.delete(&block, &b.token).await.0, 204);
    assert_error(&h.delete(&block, &b.token).await, 404, "not_blocked");
    assert_eq!(
        ids(&h.get("/api/v1/blocks", &b.token).await.1),
        Vec::<i64>::new()
    );
    let r = h.ask_friend(&a, b.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    event(&mut cb, "FRIEND_INVITE").await;

    assert_error(
        &h.put(&format!("/api/v1/blocks/{}", b.id), &b.token, json!({}))
            .await,
        422,
        "cannot_block_self",
    );
    assert_error(
        &h.put("/api/v1/blocks/99999", &b.token, json!({})).await,
        404,
        "user_not_found",
    );
}

#[tokio::test]
async fn request_validation_and_pagination() {
    let s = start_server().await;
    let h = &s.http;
    let a = s.register("alice").await;
    assert_error(&h.ask_friend(&a, a.id).await, 422, "cannot_befriend_self");
    assert_error(&h.ask_friend(&a, 424242).await, 404, "user_not_found");
    assert_error(
        &h.post("/api/v1/friends/requests", &a.token, json!({"nope": 1}))
            .await,
        422,
        "invalid_body",
    );
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        others.push(s.register(name).await);
    }
    assert_error(
        &h.post(
            "/api/v1/friends/requests",
            &a.token,
            json!({"user_id": others[0].id, "message": "x".repeat(201)}),
        )
        .await,
        422,
        "invalid_message",
    );
    for o in &others {
        let r = h.ask_friend(&a, o.id).await;
        assert_eq!(r.0, 201, "{}", r.1);
    }
    let r = h.get("/api/v1/friends/requests?limit=2", &a.token).await;
    assert_eq!(r.1["items"].as_array().unwrap().len(), 2);
    assert_eq!(r.1["next_offset"], 2);
    let r = h
        .get("/api/v1/friends/requests?limit=2&offset=2", &a.token)
        .await;
    assert_eq!(r.1["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.1["next_offset"], Value::Null);
    assert_error(
        &h.get("/api/v1/friends/requests?direction=sideways", &a.token)
            .await,
        400,
        "bad_query",
    );
    let r = h
        .call(reqwest::Method::GET, "/api/v1/friends", None, None)
        .await;
    assert_error(&r, 401, "unauthorized");
}

#[tokio::test]
async fn the_friend_limit_is_enforced_on_both_sides() {
    let s = start_server_with(&[("MQIM_LIMITS__MAX_FRIENDS", "1")]).await;
    let h = &s.http;
    let [a, b, c] = s.register_all(["alice", "bob", "carol"]).await;
    s.befriend(&a, &b).await;
    assert_error(&h.ask_friend(&a, c.id).await, 409, "friend_limit_reached");
    // Carol has room to ask, but Alice cannot accept while full.
    let r = h.ask_friend(&c, a.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    let accept = format!("/api/v1/friends/requests/{}/accept", r.1["id"]);
    assert_error(
        &h.post(&accept, &a.token, json!({})).await,
        409,
        "friend_limit_reached",
    );
    // After an unfriend there is room again.
    assert_eq!(
        h.delete(&format!("/api/v1/friends/{}", b.id), &a.token)
            .await
            .0,
        204
    );
    let r = h.post(&accept, &a.token, json!({})).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&h.get("/api/v1/friends", &a.token).await.1), [c.id]);
}

#[tokio::test]
async fn the_sender_cancels_a_pending_request_and_may_ask_again() {
    let s = start_server().await;
    let h = &s.http;
    let [a, b, c] = s.register_all(["alice", "bob", "carol"]).await;
    let mut cb = inbox(&s, &b, "json").await;
    let r = h.ask_friend(&a, b.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    let rid = r.1["id"].as_i64().unwrap();
    event(&mut cb, "FRIEND_INVITE").await;
    let cancel = format!("/api/v1/friends/requests/{rid}/cancel");

    // Only the sender cancels; a stranger does not learn the request exists.
    assert_error(
        &h.post(&cancel, &b.token, json!({})).await,
        403,
        "not_sender",
    );
    assert_error(
        &h.post(&cancel, &c.token, json!({})).await,
        404,
        "request_not_found",
    );
    assert_error(
        &h.post(
            "/api/v1/friends/requests/999999/cancel",
            &a.token,
            json!({}),
        )
        .await,
        404,
        "request_not_found",
    );

    let r = h.post(&cancel, &a.token, json!({})).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "canceled");
    assert_eq!(r.1["direction"], "outgoing");
    let ev = event(&mut cb, "FRIEND_CANCEL").await;
    assert_eq!(ev["request_id"], rid);
    assert_eq!(ev["by"]["id"], a.id);

    // It is over: neither a second cancel nor an answer.
    let accept = format!("/api/v1/friends/requests/{rid}/accept");
    assert_error(
        &h.post(&cancel, &a.token, json!({})).await,
        409,
        "request_not_pending",
    );
    assert_error(
        &h.post(&accept, &b.token, json!({})).await,
        409,
        "request_not_pending",
    );
    let r = h
        .get("/api/v1/friends/requests?state=canceled", &b.token)
        .await;
    assert_eq!(ids(&r.1), [rid]);
    assert!(ids(&h.get("/api/v1/friends", &a.token).await.1).is_empty());

    // Alice may ask again, and this time Bob accepts.
    let r = h.ask_friend(&a, b.id).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["state"], "pending");
    let again = r.1["id"].as_i64().unwrap();
    assert_ne!(again, rid);
    let r = h
        .post(
            &format!("/api/v1/friends/requests/{again}/accept"),
            &b.token,
            json!({}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ids(&h.get("/api/v1/friends", &a.token).await.1), [b.id]);
    // An accepted request cannot be canceled.
    assert_error(
        &h.post(
            &format!("/api/v1/friends/requests/{again}/cancel"),
            &a.token,
            json!({}),
        )
        .await,
        409,
        "request_not_pending",
    );
}
