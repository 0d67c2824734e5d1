//! Messages end to end (issue 5): live delivery in both formats, idempotent send,
//! receipts, typing, recall, sync, REST, offline delivery across restarts and kill -9.

use std::collections::HashSet;
use std::time::Duration;

use mqim_proto::{ClientFrame, Format, ReceiptKind, ServerFrame};
use mqim_tests::{
    have_tool, start_server, start_server_with, text, MqttClient, Received, Server, TestUser, WAIT,
};
use serde_json::json;

async fn inbox_client(s: &Server, u: &TestUser, device: &str, fmt: &str) -> MqttClient {
    let mut c = s.mqtt(u, Some(device)).await;
    let t = format!("im/u/{}/in/{fmt}", u.id);
    assert_eq!(c.subscribe_ok(&[&t]).await, [true]);
    c
}

fn is_ack(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Ack { .. })
}

fn is_msg(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Message(_))
}

#[tokio::test]
async fn live_one_to_one_in_both_formats_with_ack_and_dedup() {
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut sender = inbox_client(&s, &a, "phone", "json").await;
    let mut bj = inbox_client(&s, &b, "web", "json").await;
    let mut bp = inbox_client(&s, &b, "app", "pb").await;

    sender
        .send_frame(a.id, Format::Json, &text("m-1", b.id, "hello"))
        .await;
    let (_, ack) = sender.recv_frame_where(is_ack).await;
    let ServerFrame::Ack {
        id,
        seq,
        ref conversation_id,
        ..
    } = ack
    else {
        unreachable!()
    };
    assert_eq!(seq, 1);
    assert_eq!(
        conversation_id,
        &format!("u:{}:{}", a.id.min(b.id), a.id.max(b.id))
    );
    for c in [&mut bj, &mut bp] {
        let (r, f) = c.recv_frame_where(is_msg).await;
        let ServerFrame::Message(m) = f else {
            unreachable!()
        };
        assert_eq!(
            (m.id, m.seq, m.from, m.to_user, m.content.as_str()),
            (id, 1, a.id, Some(b.id), "hello")
        );
        assert_eq!(m.client_msg_id, "m-1");
        assert!(r.topic.ends_with(if r.topic.ends_with("pb") {
            "/pb"
        } else {
            "/json"
        }));
    }
    // The JSON frame is readable as plain JSON too.
    // A repeated client_msg_id: the same ack, nothing new stored or delivered.
    sender
        .send_frame(a.id, Format::Pb, &text("m-1", b.id, "hello again"))
        .await;
    let (_, ack2) = sender.recv_frame_where(is_ack).await;
    assert_eq!(ack, ack2);
    bj.expect_nothing(Duration::from_millis(400)).await;
    // A second message gets seq 2.
    sender
        .send_frame(a.id, Format::Json, &text("m-2", b.id, "second"))
        .await;
    let (_, f) = bj.recv_frame_where(is_msg).await;
    assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == 2 && m.content == "second"));
    let r = s
        .http
        .get(
            &format!("/api/v1/conversations/{conversation_id}/messages"),
            &b.token,
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let seqs: Vec<i64> = r.1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn bad_sends_get_error_frames_store_nothing_and_keep_the_connection() {
    let s = start_server_with(&[
        ("MQIM_MESSAGES__MAX_CONTENT_BYTES", "100"),
        ("MQIM_MESSAGES__RATE_BURST", "12"),
        ("MQIM_MESSAGES__RATE_PER_SEC", "0.01"),
    ])
    .await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let stranger = s.register("carl").await;
    s.befriend(&a, &b).await;
    let mut c = inbox_client(&s, &a, "phone", "json").await;
    let out = format!("im/u/{}/out/json", a.id);

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "bad_frame"),
        (br#"{"type":"launch_missiles"}"#.to_vec(), "bad_frame"),
        (br#"{"type":"send","client_msg_id":"x1","to_user":2}"#.to_vec(), "bad_frame"),
        (serde_json::to_vec(&text("x2", stranger.id, "hi")).unwrap(), "not_friends"),
        (serde_json::to_vec(&text("x3", 999_999, "hi")).unwrap(), "user_not_found"),
        (serde_json::to_vec(&text("x4", b.id, &"y".repeat(101))).unwrap(), "too_large"),
        (br#"{"type":"send","client_msg_id":"x5","to_group":424242,"msg_type":"text","content":"hi"}"#.to_vec(), "group_not_found"),
        (br#"{"type":"recall","message_id":777777}"#.to_vec(), "message_not_found"),
    ];
    for (payload, code) in &cases {
        c.publish(&out, payload.clone()).await;
        let (_, f) = c
            .recv_frame_where(|f| matches!(f, ServerFrame::Error { .. }))
            .await;
        let ServerFrame::Error {
            code: got, message, ..
        } = f
        else {
            unreachable!()
        };
        assert_eq!(
            &got,
            code,
            "for {}: {message}",
            String::from_utf8_lossy(payload)
        );
    }
    // Blocked by the recipient.
    assert_eq!(
        s.http
            .put(&format!("/api/v1/blocks/{}", a.id), &b.token, json!({}))
            .await
            .0,
        204
    );
    c.send_frame(a.id, Format::Json, &text("x6", b.id, "hi"))
        .await;
    c.recv_frame_where(|f| matches!(f, ServerFrame::Error { code, .. } if code == "blocked"))
        .await;
    assert_eq!(
        s.http
            .delete(&format!("/api/v1/blocks/{}", a.id), &b.token)
            .await
            .0,
        204
    );
    // Nothing was stored.
    let r = s.http.get("/api/v1/conversations", &a.token).await;
    assert_eq!(r.1.as_array().unwrap().len(), 0, "{}", r.1);
    // The rate limit: the burst allows a few sends, then rate_limited.
    let mut limited = false;
    for i in 0..20 {
        c.send_frame(a.id, Format::Json, &text(&format!("r{i}"), b.id, "x"))
            .await;
        let (_, f) = c
            .recv_frame_where(|f| is_ack(f) || matches!(f, ServerFrame::Error { .. }))
            .await;
        if matches!(f, ServerFrame::Error { ref code, .. } if code == "rate_limited") {
            limited = true;
            break;
        }
    }
    assert!(limited, "rate limit never hit");
    // Still usable.
    c.send_frame(a.id, Format::Json, &ClientFrame::Ping {})
        .await;
    c.recv_frame_where(|f| matches!(f, ServerFrame::Pong {}))
        .await;
}

#[tokio::test]
async fn receipts_typing_recall_and_sync() {
    let s = start_server_with(&[("MQIM_MESSAGES__RECALL_WINDOW_SECS", "3600")]).await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let stranger = s.register("carl").await;
    s.befriend(&a, &b).await;
    let mut ca = inbox_client(&s, &a, "phone", "json").await;
    let mut cb = inbox_client(&s, &b, "phone", "json").await;
    ca.send_frame(a.id, Format::Json, &text("m1", b.id, "one"))
        .await;
    let (_, f) = cb.recv_frame_where(is_msg).await;
    let ServerFrame::Message(m) = f else {
        unreachable!()
    };

    // Receipts are relayed to the sender.
    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
        cb.send_frame(
            b.id,
            Format::Json,
            &ClientFrame::Receipt {
                conversation_id: m.conversation_id.clone(),
                seq: 1,
                kind,
            },
        )
        .await;
        let (_, f) = ca
            .recv_frame_where(|f| matches!(f, ServerFrame::Receipt { .. }))
            .await;
        assert_eq!(
            f,
            ServerFrame::Receipt {
                conversation_id: m.conversation_id.clone(),
                seq: 1,
                kind,
                from: b.id
            }
        );
    }
    let r = s.http.get("/api/v1/conversations", &b.token).await;
    assert_eq!(r.1[0]["unread"], 0, "{}", r.1);
    assert_eq!(r.1[0]["last_message"]["content"], "one");
    // Typing reaches the friend, not strangers.
    ca.send_frame(
        a.id,
        Format::Json,
        &ClientFrame::Typing {
            to_user: Some(b.id),
            to_group: None,
        },
    )
    .await;
    let (_, f) = cb
        .recv_frame_where(|f| matches!(f, ServerFrame::Typing { .. }))
        .await;
    assert!(matches!(f, ServerFrame::Typing { from, .. } if from == a.id));
    ca.send_frame(
        a.id,
        Format::Json,
        &ClientFrame::Typing {
            to_user: Some(stranger.id),
            to_group: None,
        },
    )
    .await;
    ca.recv_frame_where(|f| matches!(f, ServerFrame::Error { code, .. } if code == "not_friends"))
        .await;
    // Only the sender may recall; both sides are told; the content is gone.
    cb.send_frame(
        b.id,
        Format::Json,
        &ClientFrame::Recall { message_id: m.id },
    )
    .await;
    cb.recv_frame_where(|f| matches!(f, ServerFrame::Error { code, .. } if code == "not_sender"))
        .await;
    ca.send_frame(
        a.id,
        Format::Json,
        &ClientFrame::Recall { message_id: m.id },
    )
    .await;
    for c in [&mut ca, &mut cb] {
        let (_, f) = c
            .recv_frame_where(|f| matches!(f, ServerFrame::Recall { .. }))
            .await;
        assert_eq!(
            f,
            ServerFrame::Recall {
                message_id: m.id,
                conversation_id: m.conversation_id.clone(),
                seq: 1,
                by: a.id
            }
        );
    }
    // Sync returns history with the recalled flag.
    ca.send_frame(a.id, Format::Json, &text("m2", b.id, "two"))
        .await;
    cb.recv_frame_where(is_msg).await;
    cb.send_frame(
        b.id,
        Format::Json,
        &ClientFrame::Sync {
            conversation_id: Some(m.conversation_id.clone()),
            after_seq: Some(0),
            limit: Some(1),
        },
    )
    .await;
    let (_, f) = cb
        .recv_frame_where(|f| matches!(f, ServerFrame::SyncResult { .. }))
        .await;
    let ServerFrame::SyncResult {
        messages, has_more, ..
    } = f
    else {
        unreachable!()
    };
    assert!(has_more);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].recalled && messages[0].content.is_empty());
    // A stranger cannot read the conversation.
    assert_eq!(
        s.http
            .get(
                &format!("/api/v1/conversations/{}/messages", m.conversation_id),
                &stranger.token
            )
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn recall_window_is_enforced() {
    let s = start_server_with(&[("MQIM_MESSAGES__RECALL_WINDOW_SECS", "0")]).await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let r = s
        .http
        .post(
            "/api/v1/messages",
            &a.token,
            json!({"client_msg_id": "q1", "to_user": b.id, "msg_type": "text", "content": "x"}),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let id = r.1["id"].as_i64().unwrap();
    let mut tries = 0;
    loop {
        let r = s
            .http
            .post(
                &format!("/api/v1/messages/{id}/recall"),
                &a.token,
                json!({}),
            )
            .await;
        if r.0 == 403 {
            assert_eq!(r.1["error"]["code"], "recall_window_passed");
            break;
        }
        tries += 1;
        assert!(tries < 100, "recall never refused: {}", r.1);
    }
}

#[tokio::test]
async fn rest_send_history_read_and_conversations() {
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut cb = inbox_client(&s, &b, "phone", "json").await;
    for i in 1..=5 {
        let r = s.http.post("/api/v1/messages", &a.token, json!({"client_msg_id": format!("c{i}"), "to_user": b.id, "msg_type": "text", "content": format!("n{i}")})).await;
        assert_eq!(r.0, 201, "{}", r.1);
        assert_eq!(r.1["seq"], i);
    }
    let dup = s
        .http
        .post(
            "/api/v1/messages",
            &a.token,
            json!({"client_msg_id": "c3", "to_user": b.id, "msg_type": "text", "content": "other"}),
        )
        .await;
    assert_eq!(dup.0, 200);
    assert_eq!(dup.1["seq"], 3);
    for i in 1..=5 {
        let (_, f) = cb.recv_frame_where(is_msg).await;
        assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == i));
    }
    let cid = dup.1["conversation_id"].as_str().unwrap().to_owned();
    let h = |q: &str| format!("/api/v1/conversations/{cid}/messages{q}");
    let r = s.http.get(&h("?before_seq=5&limit=2"), &b.token).await;
    let seqs: Vec<i64> = r.1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!((seqs, r.1["has_more"].as_bool()), (vec![3, 4], Some(true)));
    let r = s.http.get(&h("?after_seq=3"), &b.token).await;
    let seqs: Vec<i64> = r.1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(s.http.get(&h("?limit=0"), &b.token).await.0, 422);
    assert_eq!(
        s.http
            .get("/api/v1/conversations/u:1:1/messages", &b.token)
            .await
            .0,
        404
    );
    assert_eq!(
        s.http
            .get("/api/v1/conversations/garbage/messages", &b.token)
            .await
            .0,
        404
    );
    let r = s.http.get("/api/v1/conversations", &b.token).await;
    assert_eq!(
        (r.1[0]["unread"].as_i64(), r.1[0]["peer_id"].as_i64()),
        (Some(5), Some(a.id))
    );
    assert_eq!(
        s.http
            .post(
                &format!("/api/v1/conversations/{cid}/read"),
                &b.token,
                json!({"seq": 4})
            )
            .await
            .0,
        204
    );
    let r = s.http.get("/api/v1/conversations", &b.token).await;
    assert_eq!(r.1[0]["unread"], 1);
    // Bad REST sends.
    let r = s
        .http
        .post(
            "/api/v1/messages",
            &a.token,
            json!({"client_msg_id": "z", "to_user": b.id, "msg_type": "hologram", "content": "x"}),
        )
        .await;
    assert_eq!(r.0, 422);
    let r = s
        .http
        .post(
            "/api/v1/messages",
            &a.token,
            json!({"client_msg_id": "", "to_user": b.id, "msg_type": "text", "content": "x"}),
        )
        .await;
    assert_eq!(r.0, 422);
}

#[tokio::test]
async fn offline_backlog_reaches_mosquitto_sub_in_order_once() {
    if !have_tool("mosquitto_sub") {
        return;
    }
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    for i in 1..=30 {
        let r = s.http.post("/api/v1/messages", &a.token, json!({"client_msg_id": format!("o{i}"), "to_user": b.id, "msg_type": "text", "content": format!("offline {i}")})).await;
        assert_eq!(r.0, 201);
    }
    let topic = format!("im/u/{}/in/json", b.id);
    let out = tokio::time::timeout(
        WAIT,
        s.mosquitto(
            "mosquitto_sub",
            "bob-cli",
            "bob",
            &b.token,
            &["-q", "1", "-t", &topic, "-C", "30", "-W", "10"],
        )
        .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let seqs: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "{text}");
    // The same device again: nothing is repeated.
    let mut again = MqttClient::connect(s.mqtt_addr, "bob-cli", "bob", &b.token)
        .await
        .unwrap();
    assert_eq!(again.subscribe_ok(&[&topic]).await, [true]);
    again.expect_nothing(Duration::from_millis(800)).await;
    // A new device gets the unread ones (all 30: nothing was read).
    let mut fresh = inbox_client(&s, &b, "tablet", "json").await;
    for i in 1..=30 {
        let (_, f) = fresh.recv_frame_where(is_msg).await;
        assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == i));
    }
}

#[tokio::test]
async fn backlog_survives_restart_and_kill9_loses_no_acked_message() {
    let mut s = start_server_with(&[("MQIM_MESSAGES__RATE_BURST", "5000")]).await;
    let (a, b) = s.register_friends("alice", "bob").await;
    {
        let mut sender = inbox_client(&s, &a, "phone", "json").await;
        sender
            .send_frame(a.id, Format::Json, &text("before-restart", b.id, "x"))
            .await;
        sender.recv_frame_where(is_ack).await;
    }
    s.restart().await;
    let mut cb = inbox_client(&s, &b, "phone", "pb").await;
    let (_, f) = cb.recv_frame_where(is_msg).await;
    assert!(matches!(f, ServerFrame::Message(ref m) if m.client_msg_id == "before-restart"));
    drop(cb);

    // 1,000 sends in flight; kill -9 after some acks.
    let mut sender = inbox_client(&s, &a, "phone", "json").await;
    for i in 0..1000 {
        sender
            .send_frame(a.id, Format::Json, &text(&format!("k{i}"), b.id, "payload"))
            .await;
    }
    let mut acked = HashSet::new();
    while acked.len() < 300 {
        let (_, f) = sender.recv_frame_where(is_ack).await;
        if let ServerFrame::Ack { client_msg_id, .. } = f {
            acked.insert(client_msg_id);
        }
    }
    s.kill9().await;
    // Acks that were already on the way count too.
    while let Some(r) = sender.recv_within(Duration::from_millis(200)).await {
        if let ServerFrame::Ack { client_msg_id, .. } = r.frame() {
            acked.insert(client_msg_id);
        }
    }
    s.start_again().await;
    let cid = format!("u:{}:{}", a.id.min(b.id), a.id.max(b.id));
    let r = s
        .http
        .get(
            &format!("/api/v1/conversations/{cid}/messages?limit=500&after_seq=1"),
            &a.token,
        )
        .await;
    let mut stored: HashSet<String> = r.1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap().to_owned())
        .collect();
    let mut after = 501;
    loop {
        let r = s
            .http
            .get(
                &format!("/api/v1/conversations/{cid}/messages?limit=500&after_seq={after}"),
                &a.token,
            )
            .await;
        let page = r.1["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        stored.extend(
            page.iter()
                .map(|m| m["client_msg_id"].as_str().unwrap().to_owned()),
        );
        after += 500;
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
    // The seqs have no gaps.
    let last = s.http.get("/api/v1/conversations", &a.token).await.1[0]["last_seq"]
        .as_i64()
        .unwrap();
    assert_eq!(last as usize, stored.len() + 1);
    // A new device of bob receives every stored one.
    let mut fresh = inbox_client(&s, &b, "fresh", "json").await;
    let mut got = 0;
    let mut prev = 0;
    while got < stored.len() + 1 {
        let Some(r) = fresh.recv_within(WAIT).await else {
            panic!("backlog stalled after {got} of {}", stored.len() + 1);
        };
        let f = r.frame();
        if !is_msg(&f) {
            continue;
        }
        let ServerFrame::Message(m) = f else {
            unreachable!()
        };
        assert_eq!(m.seq, prev + 1, "backlog out of order");
        prev = m.seq;
        got += 1;
    }
}

/// Positions acknowledged just before a clean shutdown are saved by it: the device is
/// not sent those messages again after the restart (cursors are otherwise written
/// once a second).
#[tokio::test]
async fn a_clean_restart_resends_nothing_the_device_acknowledged() {
    let mut s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    {
        let sender = inbox_client(&s, &a, "phone", "json").await;
        let mut cb = inbox_client(&s, &b, "phone", "json").await;
        for i in 0..5 {
            sender
                .send_frame(a.id, Format::Json, &text(&format!("m{i}"), b.id, "x"))
                .await;
            cb.recv_frame_where(is_msg).await;
        }
        // The PUBACKs went out before this ping on the same connection, so once the
        // pong is back the server has seen them.
        cb.send_frame(b.id, Format::Json, &ClientFrame::Ping {})
            .await;
        cb.recv_frame_where(|f| matches!(f, ServerFrame::Pong {}))
            .await;
    }
    s.restart().await;
    let mut cb = inbox_client(&s, &b, "phone", "json").await;
    if let Some(r) = cb.recv_within(Duration::from_millis(1500)).await {
        panic!("re-sent after a clean restart: {:?}", r.topic);
    }
    // Live delivery still works on the restarted server.
    let sender = inbox_client(&s, &a, "phone", "json").await;
    sender
        .send_frame(a.id, Format::Json, &text("after", b.id, "y"))
        .await;
    let (_, f) = cb.recv_frame_where(is_msg).await;
    assert!(matches!(f, ServerFrame::Message(ref m) if m.client_msg_id == "after"));
}

/// Ping and wait for the pong: the PUBACKs `c` sent before it have reached the server.
async fn settle(c: &mut MqttClient, uid: i64) {
    c.send_frame(uid, Format::Json, &ClientFrame::Ping {}).await;
    c.recv_frame_where(|f| matches!(f, ServerFrame::Pong {}))
        .await;
}

/// A new connection of `device` subscribed to its inbox, asserted to be sent nothing.
async fn reconnects_to_nothing(s: &Server, u: &TestUser, device: &str, when: &str) -> MqttClient {
    let mut c = inbox_client(s, u, device, "json").await;
    if let Some(r) = c.recv_within(Duration::from_millis(1500)).await {
        panic!("re-sent {when}: {}", String::from_utf8_lossy(&r.payload));
    }
    c
}

/// The device a message is sent from gets its ack but no copy of its own message; the
/// sender's other devices and the recipient get the message. The sending device counts
/// as having it: neither a reconnect nor a clean restart sends it that message again.
#[tokio::test]
async fn the_sending_device_gets_its_ack_not_a_copy() {
    let mut s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut phone = inbox_client(&s, &a, "phone", "json").await;
    let mut laptop = inbox_client(&s, &a, "laptop", "pb").await;
    let mut cb = inbox_client(&s, &b, "web", "json").await;
    for i in 1..=3 {
        phone
            .send_frame(a.id, Format::Json, &text(&format!("m-{i}"), b.id, "hi"))
            .await;
        let (_, ack) = phone.recv_frame_where(|_| true).await;
        assert!(
            is_ack(&ack),
            "the sending device gets the ack first: {ack:?}"
        );
    }
    for c in [&mut laptop, &mut cb] {
        for seq in 1..=3 {
            let (_, f) = c.recv_frame_where(is_msg).await;
            assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == seq && m.from == a.id));
        }
    }
    phone.expect_nothing(Duration::from_millis(500)).await;
    // Reconnecting, the phone is not sent its own messages: they count as received
    // once everything before them was acknowledged (here: the acks).
    settle(&mut phone, a.id).await;
    phone.disconnect().await;
    let mut phone = reconnects_to_nothing(&s, &a, "phone", "on reconnect").await;
    // The peer's reply reaches the phone as usual.
    cb.send_frame(b.id, Format::Json, &text("r-1", a.id, "yo"))
        .await;
    let (_, f) = phone.recv_frame_where(is_msg).await;
    assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == 4 && m.from == b.id));
    settle(&mut phone, a.id).await;
    phone.disconnect().await;
    s.restart().await;
    reconnects_to_nothing(&s, &a, "phone", "after a clean restart").await;
}

/// A backlog of 2 in flight at a time (`backlog_window = 2`) on a manual-ack client:
/// subscribes to the inbox and returns the first two backlog messages, unacknowledged,
/// after asserting their seqs.
async fn backlog_head(
    s: &Server,
    u: &TestUser,
    device: &str,
    seqs: [i64; 2],
) -> (MqttClient, Vec<Received>) {
    let mut c = s.mqtt_manual_acks(u, device).await;
    assert_eq!(
        c.subscribe_ok(&[&format!("im/u/{}/in/json", u.id)]).await,
        [true]
    );
    let mut got = Vec::new();
    for want in seqs {
        let (r, f) = c.recv_frame_where(is_msg).await;
        assert!(
            matches!(f, ServerFrame::Message(ref m) if m.seq == want),
            "{f:?}"
        );
        got.push(r);
    }
    (c, got)
}

/// A live message that arrives (and is acknowledged) while a backlog drains is newer
/// than all of the backlog; it must not move the device's cursor past backlog messages
/// the device has not acknowledged, or a device leaving mid-backlog would never be sent
/// the rest. Once the whole backlog is acknowledged, the live one counts too.
#[tokio::test]
async fn a_live_ack_during_the_backlog_does_not_skip_the_rest_of_it() {
    let s = start_server_with(&[("MQIM_MESSAGES__BACKLOG_WINDOW", "2")]).await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut ca = inbox_client(&s, &a, "phone", "json").await;
    let send = |i: i64| text(&format!("m{i}"), b.id, "x");
    for i in 1..=5 {
        ca.send_frame(a.id, Format::Json, &send(i)).await;
        ca.recv_frame_where(is_ack).await;
    }
    // Bob's phone gets seq 1 and 2 of its backlog; the rest waits for their PUBACKs.
    let (mut cb, head) = backlog_head(&s, &b, "phone", [1, 2]).await;
    // Seq 6 arrives live, and the phone acknowledges 1, 2 and 6 in the order received.
    ca.send_frame(a.id, Format::Json, &send(6)).await;
    let (live, f) = cb.recv_frame_where(is_msg).await;
    assert!(
        matches!(f, ServerFrame::Message(ref m) if m.seq == 6),
        "{f:?}"
    );
    for r in head.iter().chain([&live]) {
        cb.ack(r).await;
    }
    settle(&mut cb, b.id).await;
    // The phone leaves with 3, 4 and 5 not acknowledged: it is sent them next time.
    cb.disconnect().await;
    let (mut cb, head) = backlog_head(&s, &b, "phone", [3, 4]).await;
    // This time a live message during the backlog, then the whole backlog, are
    // acknowledged.
    ca.send_frame(a.id, Format::Json, &send(7)).await;
    let (live, _) = cb
        .recv_frame_where(|f| matches!(f, ServerFrame::Message(m) if m.seq == 7))
        .await;
    for r in head.iter().chain([&live]) {
        cb.ack(r).await;
    }
    for want in [5, 6] {
        let (r, f) = cb.recv_frame_where(is_msg).await;
        assert!(
            matches!(f, ServerFrame::Message(ref m) if m.seq == want),
            "{f:?}"
        );
        cb.ack(&r).await;
    }
    s.wait_for_log("backlog delivered", 1).await;
    cb.disconnect().await;
    reconnects_to_nothing(
        &s,
        &b,
        "phone",
        "after the backlog and a live message were acknowledged",
    )
    .await;
}

/// With no other device of the sender connected, the message is not published to the
/// sender's inbox at all; the sending device's ack stands for it: the device is not sent
/// its own messages on reconnect nor after a restart, and a device of the sender that
/// connects later gets them from its backlog.
#[tokio::test]
async fn a_lone_sending_device_is_not_sent_its_own_messages_later() {
    let mut s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut phone = inbox_client(&s, &a, "phone", "json").await;
    let mut cb = inbox_client(&s, &b, "web", "json").await;
    for i in 1..=3 {
        phone
            .send_frame(a.id, Format::Json, &text(&format!("m-{i}"), b.id, "hi"))
            .await;
        let (_, f) = phone.recv_frame_where(|_| true).await;
        assert!(
            matches!(f, ServerFrame::Ack { seq, .. } if seq == i),
            "{f:?}"
        );
        let (_, f) = cb.recv_frame_where(is_msg).await;
        assert!(matches!(f, ServerFrame::Message(ref m) if m.seq == i && m.from == a.id));
    }
    phone.expect_nothing(Duration::from_millis(300)).await;
    settle(&mut phone, a.id).await;
    phone.disconnect().await;
    let phone = reconnects_to_nothing(&s, &a, "phone", "on reconnect").await;
    phone.disconnect().await;
    s.restart().await;
    reconnects_to_nothing(&s, &a, "phone", "after a clean restart").await;
    // Alice's laptop, seen for the first time, gets the conversation from its backlog.
    let mut laptop = inbox_client(&s, &a, "laptop", "json").await;
    for seq in 1..=3 {
        let (_, f) = laptop.recv_frame_where(is_msg).await;
        assert!(
            matches!(f, ServerFrame::Message(ref m) if m.seq == seq && m.from == a.id),
            "{f:?}"
        );
    }
}

/// Frames that wait on the database (`sync` here) run beside the message path: a user
/// flooding the server with them does not hold up a message someone else sends
/// meanwhile, and what is over its share is refused with `rate_limited`, never
/// dropped silently.
#[tokio::test]
async fn a_flood_of_sync_frames_does_not_hold_up_other_users_messages() {
    let s = start_server_with(&[
        ("MQIM_MESSAGES__RATE_BURST", "1000"),
        ("MQIM_MESSAGES__RATE_PER_SEC", "1000"),
    ])
    .await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut ca = inbox_client(&s, &a, "phone", "json").await;
    // History to make each sync do real work: 500 messages.
    const HISTORY: usize = 500;
    for i in 0..HISTORY {
        ca.send_frame(a.id, Format::Json, &text(&format!("h{i}"), b.id, "history"))
            .await;
    }
    let mut cid = String::new();
    for _ in 0..HISTORY {
        let (_, f) = ca.recv_frame_where(is_ack).await;
        if let ServerFrame::Ack {
            conversation_id, ..
        } = f
        {
            cid = conversation_id;
        }
    }

    const SYNCS: usize = 200;
    let sync = ClientFrame::Sync {
        conversation_id: Some(cid.clone()),
        after_seq: Some(0),
        limit: Some(500),
    };
    for _ in 0..SYNCS {
        ca.send_frame(a.id, Format::Json, &sync).await;
    }
    let answered = |f: &ServerFrame| {
        matches!(f, ServerFrame::SyncResult { .. })
            || matches!(f, ServerFrame::Error { code, .. } if code == "rate_limited")
    };
    // The flood is being worked on; now somebody else sends alice a message.
    let (_, first) = ca.recv_frame_where(answered).await;
    let mut results = usize::from(matches!(first, ServerFrame::SyncResult { .. }));
    let mut refused = 1 - results;
    let cb = inbox_client(&s, &b, "phone", "json").await;
    cb.send_frame(b.id, Format::Json, &text("hello", a.id, "are you there?"))
        .await;
    let mut before_message = None;
    while results + refused < SYNCS || before_message.is_none() {
        let (_, f) = ca
            .recv_frame_where(|f| {
                answered(f) || matches!(f, ServerFrame::Message(m) if m.from == b.id)
            })
            .await;
        match f {
            ServerFrame::SyncResult { messages, .. } => {
                assert_eq!(messages.len(), HISTORY);
                results += 1;
            }
            ServerFrame::Error { .. } => refused += 1,
            ServerFrame::Message(m) => {
                assert_eq!(m.content, "are you there?");
                before_message = Some(results);
            }
            _ => unreachable!(),
        }
    }
    let before_message = before_message.unwrap_or(results);
    assert_eq!(results + refused, SYNCS, "every sync answered or refused");
    assert!(
        before_message < results,
        "bob's message waited behind all {results} sync results"
    );
    assert!(refused > 0, "a flood of {SYNCS} was not limited");
    ca.expect_nothing(Duration::from_millis(300)).await;
}

/// The embedded broker keeps a bounded log per topic (`mqtt.segment_bytes` ×
/// `segment_count`). A connected device that falls further behind than that used to
/// have the dropped messages skipped, unseen, and its acknowledgements of later ones
/// moved its cursor past them, so it never got them. Now the broker closes the lagging
/// connection, and the device gets them from its backlog when it comes back.
#[tokio::test]
async fn a_device_that_falls_behind_the_broker_log_is_closed_and_misses_nothing() {
    // Logs that keep at least one full segment of ~20 messages per topic; backlogs two
    // at a time, which fits.
    let s = start_server_with(&[
        ("MQIM_MQTT__SEGMENT_BYTES", "4096"),
        ("MQIM_MQTT__SEGMENT_COUNT", "2"),
        ("MQIM_MESSAGES__BACKLOG_WINDOW", "2"),
        ("MQIM_MESSAGES__MAX_CONTENT_BYTES", "512"),
    ])
    .await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut ca = inbox_client(&s, &a, "phone", "json").await;
    // Bob's phone receives but acknowledges nothing yet: once its 100 in-flight slots
    // are used, the rest waits in the broker's log, which drops most of it.
    let mut cb = s.mqtt_manual_acks(&b, "phone").await;
    assert_eq!(
        cb.subscribe_ok(&[&format!("im/u/{}/in/json", b.id)]).await,
        [true]
    );
    // Beyond the 100 in flight, more than the log can keep (at most two segments of
    // ~9 frames each, entries counted at their real size), so that the first one not
    // sent is always gone from it.
    const N: i64 = 180;
    for i in 1..=N {
        ca.send_frame(a.id, Format::Json, &text(&format!("m{i}"), b.id, "x"))
            .await;
        ca.recv_frame_where(is_ack).await;
    }
    let mut held = Vec::new();
    let mut seqs = Vec::new();
    while let Some(r) = cb.recv_within(Duration::from_millis(700)).await {
        if let ServerFrame::Message(m) = r.frame() {
            seqs.push(m.seq);
            held.push(r);
        }
    }
    assert!(
        !seqs.is_empty() && seqs.len() < N as usize,
        "the broker should hold some back: got {}",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order"
    );
    let acked = seqs.len() as i64;
    // Acknowledging frees the slots; the broker finds the rest gone from its log.
    for r in &held {
        cb.ack(r).await;
    }
    assert!(
        cb.closed_within(Duration::from_secs(10)).await.is_some(),
        "a device behind the broker's log must be disconnected, not skipped ahead"
    );
    drop(cb);
    // Back again: everything after what reached the server acknowledged (PUBACKs still
    // on their way when it closed the connection count as not received), in order,
    // through the last message, nothing skipped.
    let mut cb = inbox_client(&s, &b, "phone", "json").await;
    let (_, f) = cb.recv_frame_where(is_msg).await;
    let ServerFrame::Message(first) = f else {
        unreachable!()
    };
    assert!(
        first.seq >= 1 && first.seq <= acked + 1,
        "the backlog must start at or before {}, not at {}",
        acked + 1,
        first.seq
    );
    for want in first.seq + 1..=N {
        let (_, f) = cb.recv_frame_where(is_msg).await;
        assert!(
            matches!(f, ServerFrame::Message(ref m) if m.seq == want),
            "expected seq {want}, got {f:?}"
        );
    }
}

/// A NUL character in a send's content is refused with `bad_frame` on both backends
/// (PostgreSQL's text cannot hold it). Sent in one burst with good sends, it leaves
/// them alone: they are acked with seqs 1-3 in turn and delivered.
#[tokio::test]
async fn a_nul_in_content_is_refused_and_leaves_the_other_sends_alone() {
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut sender = inbox_client(&s, &a, "phone", "json").await;
    let mut bob = inbox_client(&s, &b, "web", "json").await;
    let contents = ["one", "bad\u{0}nul", "three", "four"];
    for (k, c) in contents.iter().enumerate() {
        sender
            .send_frame(a.id, Format::Json, &text(&format!("n{k}"), b.id, c))
            .await;
    }
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    while acked.len() + refused.len() < contents.len() {
        let (_, f) = sender
            .recv_frame_where(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await;
        match f {
            ServerFrame::Ack {
                client_msg_id, seq, ..
            } => acked.push((client_msg_id, seq)),
            ServerFrame::Error {
                client_msg_id,
                code,
                ..
            } => refused.push((client_msg_id, code)),
            _ => unreachable!(),
        }
    }
    assert_eq!(refused, [(Some("n1".to_owned()), "bad_frame".to_owned())]);
    acked.sort();
    assert_eq!(
        acked,
        [
            ("n0".to_owned(), 1),
            ("n2".to_owned(), 2),
            ("n3".to_owned(), 3)
        ]
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        let (_, f) = bob.recv_frame_where(is_msg).await;
        if let ServerFrame::Message(m) = f {
            got.push(m.content);
        }
    }
    assert_eq!(got, ["one", "three", "four"]);
}
