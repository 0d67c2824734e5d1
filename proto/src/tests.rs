//! Cross-module tests: JSON as people type it, JSON ⇄ protobuf round trips, hostile input,
//! and the peeks.

use prost::Message as _;
use serde_json::{json, Value};

use crate::pb::{self, client_frame as cf, server_frame as sf};
use crate::*;

fn dj(s: &str) -> Result<ClientFrame, FrameError> {
    decode_client(Format::Json, s.as_bytes())
}

fn ok_client(s: &str) -> ClientFrame {
    match dj(s) {
        Ok(f) => f,
        Err(e) => panic!("{s} should decode: {e}"),
    }
}

fn json_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("encoder produced invalid JSON")
}

// ---------------------------------------------------------------------------------------
// JSON as a `mosquitto_pub -m '...'` user types it
// ---------------------------------------------------------------------------------------

#[test]
fn typed_json_examples_decode() {
    assert_eq!(
        ok_client(
            r#"{"type":"send","client_msg_id":"c1","to_user":2,"msg_type":"text","content":"hi"}"#
        ),
        ClientFrame::Send {
            client_msg_id: "c1".into(),
            to_user: Some(2),
            to_group: None,
            msg_type: MsgType::Text,
            content: "hi".into(),
            reply_to: None,
        }
    );
    // Pretty-printed, with a trailing newline, keys in any order, `type` last.
    assert_eq!(
        ok_client(
            "\n  { \"to_group\": 7, \"content\": \"héllo 👋\", \"msg_type\": \"image\",\n    \"reply_to\": 3, \"client_msg_id\": \"x-1\", \"type\": \"send\" }\n"
        ),
        ClientFrame::Send {
            client_msg_id: "x-1".into(),
            to_user: None,
            to_group: Some(7),
            msg_type: MsgType::Image,
            content: "héllo 👋".into(),
            reply_to: Some(3),
        }
    );
    assert_eq!(
        ok_client(r#"{"type":"receipt","conversation_id":"u:1:2","seq":5,"kind":"read"}"#),
        ClientFrame::Receipt {
            conversation_id: "u:1:2".into(),
            seq: 5,
            kind: ReceiptKind::Read,
        }
    );
    assert_eq!(
        ok_client(r#"{"type":"receipt","conversation_id":"g:3","seq":1,"kind":"delivered"}"#),
        ClientFrame::Receipt {
            conversation_id: "g:3".into(),
            seq: 1,
            kind: ReceiptKind::Delivered,
        }
    );
    assert_eq!(
        ok_client(r#"{"type":"typing","to_user":2}"#),
        ClientFrame::Typing {
            to_user: Some(2),
            to_group: None,
        }
    );
    assert_eq!(
        ok_client(r#"{"type":"recall","message_id":17}"#),
        ClientFrame::Recall { message_id: 17 }
    );
    assert_eq!(
        ok_client(r#"{"type":"sync"}"#),
        ClientFrame::Sync {
            conversation_id: None,
            after_seq: None,
            limit: None,
        }
    );
    assert_eq!(
        ok_client(r#"{"type":"sync","conversation_id":"g:3","after_seq":10,"limit":50}"#),
        ClientFrame::Sync {
            conversation_id: Some("g:3".into()),
            after_seq: Some(10),
            limit: Some(50),
        }
    );
    assert_eq!(ok_client(r#"{"type":"ping"}"#), ClientFrame::Ping {});
    assert_eq!(ok_client("{\"type\": \"ping\"}\n"), ClientFrame::Ping {});
}

#[test]
fn unknown_fields_ignored_and_null_means_absent() {
    assert_eq!(
        ok_client(r#"{"type":"ping","ts":123,"extra":{"nested":[1,2,3]}}"#),
        ClientFrame::Ping {}
    );
    assert_eq!(
        ok_client(r#"{"type":"typing","to_user":null,"to_group":4,"device":"phone"}"#),
        ClientFrame::Typing {
            to_user: None,
            to_group: Some(4),
        }
    );
}

#[test]
fn optional_fields_are_omitted_from_json() {
    let f = ClientFrame::Sync {
        conversation_id: None,
        after_seq: None,
        limit: None,
    };
    assert_eq!(encode_client(Format::Json, &f), br#"{"type":"sync"}"#);
    assert_eq!(
        encode_client(Format::Json, &ClientFrame::Ping {}),
        br#"{"type":"ping"}"#
    );
    assert_eq!(
        encode_server(Format::Json, &ServerFrame::Pong {}),
        br#"{"type":"pong"}"#
    );
    let m = encode_server(Format::Json, &ServerFrame::Message(sample_message(1)));
    let v = json_value(&m);
    assert_eq!(v["type"], "message");
    assert!(
        v.get("recalled").is_none(),
        "recalled=false must be omitted"
    );
    assert!(v.get("to_group").is_none());
    assert!(v.get("reply_to").is_none());
    let mut recalled = sample_message(1);
    recalled.recalled = true;
    let v = json_value(&encode_server(
        Format::Json,
        &ServerFrame::Message(recalled),
    ));
    assert_eq!(v["recalled"], true);
}

// ---------------------------------------------------------------------------------------
// Round trips: JSON → model → pb → model → JSON
// ---------------------------------------------------------------------------------------

fn sample_message(seq: i64) -> MessageFrame {
    MessageFrame {
        id: 100 + seq,
        conversation_id: "u:1:2".into(),
        seq,
        from: 1,
        to_user: Some(2),
        to_group: None,
        msg_type: MsgType::Text,
        content: format!("message {seq}"),
        client_msg_id: format!("c{seq}"),
        created_at: 1_700_000_000_000 + seq,
        reply_to: None,
        recalled: false,
    }
}

const CLIENT_JSON: &[&str] = &[
    r#"{"type":"send","client_msg_id":"c1","to_user":2,"msg_type":"text","content":"hi"}"#,
    r#"{"type":"send","client_msg_id":"c2","to_group":9,"msg_type":"image","content":"/api/v1/files/ab12","reply_to":5}"#,
    r#"{"type":"send","client_msg_id":"c3","to_user":2,"msg_type":"voice","content":""}"#,
    r#"{"type":"send","client_msg_id":"c4","to_user":2,"msg_type":"video","content":"v"}"#,
    r#"{"type":"send","client_msg_id":"c5","to_user":2,"msg_type":"file","content":"f"}"#,
    r#"{"type":"send","client_msg_id":"c6","to_user":2,"msg_type":"location","content":"{\"lat\":1.5,\"lon\":2}"}"#,
    r#"{"type":"send","client_msg_id":"c7","to_user":2,"msg_type":"custom","content":"\u0000\n\"✓"}"#,
    // Invalid frames still round-trip: validation is a separate step.
    r#"{"type":"send","client_msg_id":"","to_user":0,"to_group":-1,"msg_type":"text","content":"x"}"#,
    r#"{"type":"receipt","conversation_id":"u:1:2","seq":5,"kind":"read"}"#,
    r#"{"type":"receipt","conversation_id":"g:3","seq":1,"kind":"delivered"}"#,
    r#"{"type":"typing","to_user":2}"#,
    r#"{"type":"typing","to_group":3}"#,
    r#"{"type":"typing"}"#,
    r#"{"type":"recall","message_id":17}"#,
    r#"{"type":"recall","message_id":0}"#,
    r#"{"type":"sync"}"#,
    r#"{"type":"sync","conversation_id":"g:3","after_seq":0,"limit":50}"#,
    r#"{"type":"sync","after_seq":9223372036854775807,"limit":4294967295}"#,
    r#"{"type":"ping"}"#,
];

const SERVER_JSON: &[&str] = &[
    r#"{"type":"message","id":101,"conversation_id":"u:1:2","seq":1,"from":1,"to_user":2,"msg_type":"text","content":"hi","client_msg_id":"c1","created_at":1700000000000}"#,
    r#"{"type":"message","id":102,"conversation_id":"g:9","seq":2,"from":1,"to_group":9,"msg_type":"file","content":"","client_msg_id":"c2","created_at":1,"reply_to":101,"recalled":true}"#,
    r#"{"type":"ack","client_msg_id":"c1","id":101,"conversation_id":"u:1:2","seq":1,"created_at":1700000000000}"#,
    r#"{"type":"error","client_msg_id":"c1","code":"not_friends","message":"you are not friends"}"#,
    r#"{"type":"error","code":"bad_frame","message":"invalid JSON frame"}"#,
    r#"{"type":"receipt","conversation_id":"u:1:2","seq":3,"kind":"delivered","from":2}"#,
    r#"{"type":"receipt","conversation_id":"g:4","seq":8,"kind":"read","from":5}"#,
    r#"{"type":"typing","from":1,"to_user":2,"conversation_id":"u:1:2"}"#,
    r#"{"type":"typing","from":1,"to_group":4,"conversation_id":"g:4"}"#,
    r#"{"type":"recall","message_id":101,"conversation_id":"u:1:2","seq":1,"by":1}"#,
    r#"{"type":"sync_result","messages":[],"has_more":false}"#,
    r#"{"type":"sync_result","messages":[{"id":101,"conversation_id":"g:9","seq":1,"from":1,"to_group":9,"msg_type":"text","content":"a","client_msg_id":"c1","created_at":5},{"id":102,"conversation_id":"g:9","seq":2,"from":3,"to_group":9,"msg_type":"custom","content":"b","client_msg_id":"c9","created_at":6,"recalled":true}],"has_more":true,"conversation_id":"g:9"}"#,
    r#"{"type":"pong"}"#,
    r#"{"type":"event","event":"FRIEND_INVITE","data":{"from":3,"message":"hi","request_id":12}}"#,
    r#"{"type":"event","event":"SESSION_REVOKED","data":null}"#,
    r#"{"type":"event","event":"SYSTEM_NOTICE","data":"maintenance at 02:00"}"#,
    r#"{"type":"event","event":"GROUP_UPDATED","data":[1,2.5,true,{"a":[]}]}"#,
];

#[test]
fn client_frames_round_trip_json_pb_json() {
    let mut kinds = std::collections::BTreeSet::new();
    for src in CLIENT_JSON {
        let model = ok_client(src);
        kinds.insert(model.kind());
        let pb_bytes = encode_client(Format::Pb, &model);
        let back = decode_client(Format::Pb, &pb_bytes).expect(src);
        assert_eq!(back, model, "{src}");
        let json1 = encode_client(Format::Json, &model);
        let json2 = encode_client(Format::Json, &back);
        assert_eq!(json1, json2, "{src}");
        // Nothing lost or invented relative to what was typed.
        assert_eq!(json_value(&json1), json_value(src.as_bytes()), "{src}");
        // Re-encoding is stable byte for byte.
        assert_eq!(
            encode_client(Format::Pb, &back),
            pb_bytes,
            "{src}: pb not stable"
        );
    }
    assert_eq!(kinds.len(), 6, "every client frame kind is covered");
}

#[test]
fn server_frames_round_trip_json_pb_json() {
    let mut kinds = std::collections::BTreeSet::new();
    for src in SERVER_JSON {
        let model = decode_server(Format::Json, src.as_bytes()).expect(src);
        kinds.insert(model.kind());
        let pb_bytes = encode_server(Format::Pb, &model);
        let back = decode_server(Format::Pb, &pb_bytes).expect(src);
        assert_eq!(back, model, "{src}");
        let json1 = encode_server(Format::Json, &model);
        let json2 = encode_server(Format::Json, &back);
        assert_eq!(json1, json2, "{src}");
        assert_eq!(json_value(&json1), json_value(src.as_bytes()), "{src}");
        assert_eq!(
            encode_server(Format::Pb, &back),
            pb_bytes,
            "{src}: pb not stable"
        );
    }
    assert_eq!(kinds.len(), 9, "every server frame kind is covered");
}

#[test]
fn pb_field_for_field() {
    // The protobuf side of a frame, spelled out, so a renumbering or renaming in the
    // conversion cannot go unnoticed.
    let f = ok_client(
        r#"{"type":"send","client_msg_id":"c1","to_group":9,"msg_type":"location","content":"x","reply_to":4}"#,
    );
    let p = pb::ClientFrame::from(f);
    assert_eq!(
        p,
        pb::ClientFrame {
            frame: Some(cf::Frame::Send(cf::Send {
                client_msg_id: "c1".into(),
                to_user: None,
                to_group: Some(9),
                msg_type: pb::MsgType::Location as i32,
                content: "x".into(),
                reply_to: Some(4),
            })),
        }
    );
    let ev = decode_server(
        Format::Json,
        br#"{"type":"event","event":"GROUP_KICKED","data":{"group_id":3}}"#,
    )
    .expect("event");
    assert_eq!(
        pb::ServerFrame::from(ev),
        pb::ServerFrame {
            frame: Some(sf::Frame::Event(sf::Event {
                event: "GROUP_KICKED".into(),
                data: r#"{"group_id":3}"#.into(),
            })),
        }
    );
    for t in MsgType::ALL {
        let p = pb::MsgType::from(t);
        assert_eq!(
            p.as_str_name(),
            format!("MSG_TYPE_{}", t.as_str().to_uppercase())
        );
    }
    for k in ReceiptKind::ALL {
        let p = pb::ReceiptKind::from(k);
        assert_eq!(
            p.as_str_name(),
            format!("RECEIPT_KIND_{}", k.as_str().to_uppercase())
        );
    }
}

#[test]
fn pb_event_data() {
    let enc = |data: &str| {
        pb::ServerFrame {
            frame: Some(sf::Frame::Event(sf::Event {
                event: "E".into(),
                data: data.into(),
            })),
        }
        .encode_to_vec()
    };
    match decode_server(Format::Pb, &enc("")) {
        Ok(ServerFrame::Event { data, .. }) => assert_eq!(data, Value::Null),
        other => panic!("{other:?}"),
    }
    match decode_server(Format::Pb, &enc(r#" {"a": [1]} "#)) {
        Ok(ServerFrame::Event { data, .. }) => assert_eq!(data, json!({"a": [1]})),
        other => panic!("{other:?}"),
    }
    let err = decode_server(Format::Pb, &enc("{not json")).expect_err("bad data");
    assert!(err.to_string().contains("data"), "{err}");
    // A JSON event without `data` means null.
    match decode_server(Format::Json, br#"{"type":"event","event":"E"}"#) {
        Ok(ServerFrame::Event { data, .. }) => assert_eq!(data, Value::Null),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

fn expect_json_err(s: &[u8], needle: &str) {
    match decode_client(Format::Json, s) {
        Err(e @ FrameError::Json(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "{:?}: {msg:?} lacks {needle:?}",
                String::from_utf8_lossy(s)
            );
        }
        other => panic!(
            "{:?}: expected a JSON error, got {other:?}",
            String::from_utf8_lossy(s)
        ),
    }
}

#[test]
fn bad_json_is_reported() {
    expect_json_err(b"", "empty");
    expect_json_err(b"   \n", "empty");
    expect_json_err(b"hello", "object");
    expect_json_err(b"[\"ping\"]", "object");
    expect_json_err(b"\"ping\"", "object");
    expect_json_err(b"null", "object");
    expect_json_err(b"42", "object");
    expect_json_err(b"{", "EOF");
    expect_json_err(br#"{"type":"ping"}{"type":"ping"}"#, "trailing");
    expect_json_err(br#"{"type":"ping",}"#, "");
    expect_json_err(br#"{"client_msg_id":"c1"}"#, "missing field `type`");
    expect_json_err(br#"{"type":"dance"}"#, "unknown variant `dance`");
    expect_json_err(br#"{"type":"SEND"}"#, "unknown variant");
    expect_json_err(br#"{"type":42}"#, "");
    expect_json_err(
        br#"{"type":"send","to_user":2,"msg_type":"text","content":"hi"}"#,
        "missing field `client_msg_id`",
    );
    expect_json_err(
        br#"{"type":"send","client_msg_id":"c","to_user":"2","msg_type":"text","content":"hi"}"#,
        "invalid type",
    );
    expect_json_err(
        br#"{"type":"send","client_msg_id":"c","to_user":2.5,"msg_type":"text","content":"hi"}"#,
        "",
    );
    expect_json_err(
        br#"{"type":"send","client_msg_id":"c","to_user":2,"msg_type":"sticker","content":"hi"}"#,
        "unknown variant `sticker`",
    );
    expect_json_err(
        br#"{"type":"send","client_msg_id":1,"to_user":2,"msg_type":"text","content":"hi"}"#,
        "invalid type",
    );
    expect_json_err(
        br#"{"type":"receipt","conversation_id":"u:1:2","seq":1,"kind":"seen"}"#,
        "unknown variant `seen`",
    );
    expect_json_err(
        br#"{"type":"recall","message_id":99999999999999999999}"#,
        "",
    );
    expect_json_err(br#"{"type":"sync","limit":-1}"#, "");
    expect_json_err(
        br#"{"type":"recall","message_id":1,"message_id":2}"#,
        "duplicate",
    );
    // Invalid UTF-8 inside a string and outside.
    expect_json_err(b"{\"type\":\"send\",\"client_msg_id\":\"\xff\xfe\"}", "");
    expect_json_err(b"{\"type\":\"ping\"}\xc3", "");
    // Lone surrogate escape.
    expect_json_err(
        br#"{"type":"send","client_msg_id":"\ud800","to_user":2,"msg_type":"text","content":""}"#,
        "",
    );
}

#[test]
fn error_messages_are_bounded() {
    let long_type = format!(r#"{{"type":"{}"}}"#, "x".repeat(100_000));
    let err = dj(&long_type).expect_err("unknown type");
    assert!(err.to_string().len() < 1_000, "error message not capped");
}

#[test]
fn huge_and_deep_json_fails_cleanly() {
    let brackets = "[".repeat(1 << 20);
    expect_json_err(brackets.as_bytes(), "object");
    // The same inside an object reaches the parser, which stops at its depth limit.
    let inside = format!(r#"{{"type":"ping","x":{brackets}"#);
    expect_json_err(inside.as_bytes(), "recursion");
    let objects = format!("{}{}", r#"{"a":"#.repeat(200_000), "1");
    expect_json_err(objects.as_bytes(), "");
    let deep_typed = format!(
        r#"{{"type":"send","client_msg_id":"c","to_user":2,"msg_type":"text","content":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    expect_json_err(deep_typed.as_bytes(), "");
    // Server decoding and the peeks refuse them too.
    assert!(decode_server(Format::Json, inside.as_bytes()).is_err());
    assert_eq!(peek_message(Format::Json, inside.as_bytes()), None);
    assert_eq!(peek_client_msg_id(Format::Json, inside.as_bytes()), None);
    // Closed deep nesting within the limit in an ignored field is fine.
    let ok_deep = format!(
        r#"{{"type":"ping","x":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(ok_client(&ok_deep), ClientFrame::Ping {});
}

#[test]
fn bad_protobuf_is_reported() {
    // Empty payload: valid protobuf with nothing set.
    assert_eq!(decode_client(Format::Pb, b""), Err(FrameError::NoFrameKind));
    assert_eq!(decode_server(Format::Pb, b""), Err(FrameError::NoFrameKind));
    // Only an unknown field (tag 15, varint): skipped, so no frame kind either.
    assert_eq!(
        decode_client(Format::Pb, &[0x78, 0x01]),
        Err(FrameError::NoFrameKind)
    );
    // Garbage.
    for bad in [
        &[0xff][..],
        &[0x0a],
        &[0x0a, 0x05, 0x01],
        &[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[0x07],
        b"{\"type\":\"ping\"}",
    ] {
        assert!(
            matches!(decode_client(Format::Pb, bad), Err(FrameError::Protobuf(_))),
            "{bad:?}"
        );
    }
    let send = |msg_type: i32| {
        pb::ClientFrame {
            frame: Some(cf::Frame::Send(cf::Send {
                client_msg_id: "c".into(),
                to_user: Some(2),
                msg_type,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    };
    let e = decode_client(Format::Pb, &send(0)).expect_err("unspecified");
    assert!(e.to_string().contains("MSG_TYPE_UNSPECIFIED"), "{e}");
    let e = decode_client(Format::Pb, &send(99)).expect_err("unknown");
    assert!(e.to_string().contains("99"), "{e}");
    assert!(decode_client(Format::Pb, &send(-1)).is_err());
    assert!(decode_client(Format::Pb, &send(1)).is_ok());

    let receipt = |kind: i32| {
        pb::ClientFrame {
            frame: Some(cf::Frame::Receipt(cf::Receipt {
                conversation_id: "u:1:2".into(),
                seq: 1,
                kind,
            })),
        }
        .encode_to_vec()
    };
    assert!(decode_client(Format::Pb, &receipt(0)).is_err());
    assert!(decode_client(Format::Pb, &receipt(3)).is_err());
    assert!(decode_client(Format::Pb, &receipt(2)).is_ok());

    // Server side: an unspecified enum deep inside sync_result.
    let mut bad_msg = pb::MessageFrame::from(sample_message(1));
    bad_msg.msg_type = 0;
    let sr = pb::ServerFrame {
        frame: Some(sf::Frame::SyncResult(sf::SyncResult {
            messages: vec![sample_message(2).into(), bad_msg],
            has_more: false,
            conversation_id: None,
        })),
    };
    assert!(decode_server(Format::Pb, &sr.encode_to_vec()).is_err());

    // Invalid UTF-8 in a string field: tag 1 (send), len 4, tag 1 (client_msg_id), len 2, bytes.
    let raw = [0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    assert!(matches!(
        decode_client(Format::Pb, &raw),
        Err(FrameError::Protobuf(_))
    ));
    // A frame truncated anywhere is refused or decodes to something; never a panic.
    let full = encode_client(Format::Pb, &ok_client(CLIENT_JSON[0]));
    for cut in 0..full.len() {
        let _ = decode_client(Format::Pb, &full[..cut]);
    }
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Runs every decoder and peek on `bytes` in both formats; they may fail, never panic.
fn exercise(bytes: &[u8]) {
    for fmt in Format::ALL {
        if let Ok(f) = decode_client(fmt, bytes) {
            let _ = f.validate();
        }
        let _ = decode_server(fmt, bytes);
        let _ = peek_message(fmt, bytes);
        let _ = peek_client_msg_id(fmt, bytes);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(64);
        exercise(&rng.bytes(len));
    }
    for _ in 0..50 {
        let len = rng.below(64 * 1024);
        exercise(&rng.bytes(len));
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = Rng(42);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for src in CLIENT_JSON {
        let f = ok_client(src);
        seeds.push(src.as_bytes().to_vec());
        seeds.push(encode_client(Format::Pb, &f));
    }
    for src in SERVER_JSON {
        let f = decode_server(Format::Json, src.as_bytes()).expect(src);
        seeds.push(src.as_bytes().to_vec());
        seeds.push(encode_server(Format::Pb, &f));
    }
    for seed in &seeds {
        for _ in 0..300 {
            let mut b = seed.clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                    1 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    2 => {
                        let i = rng.below(b.len() + 1);
                        b.insert(i, rng.next() as u8);
                    }
                    _ => {
                        let cut = rng.below(b.len() + 1);
                        b.truncate(cut);
                    }
                }
            }
            exercise(&b);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Peeks
// ---------------------------------------------------------------------------------------

#[test]
fn peek_message_both_formats() {
    let mut m = sample_message(42);
    m.conversation_id = "g:77".into();
    m.content = "x".repeat(10_000);
    let frame = ServerFrame::Message(m);
    for fmt in Format::ALL {
        let bytes = encode_server(fmt, &frame);
        assert_eq!(
            peek_message(fmt, &bytes),
            Some(("g:77".to_string(), 42)),
            "{fmt}"
        );
        // Other frame kinds are not messages.
        for src in SERVER_JSON {
            let f = decode_server(Format::Json, src.as_bytes()).expect(src);
            let bytes = encode_server(fmt, &f);
            let expected = match &f {
                ServerFrame::Message(m) => Some((m.conversation_id.clone(), m.seq)),
                _ => None,
            };
            assert_eq!(peek_message(fmt, &bytes), expected, "{fmt} {src}");
        }
        // A client frame or garbage is not a message either.
        let send = encode_client(fmt, &ok_client(CLIENT_JSON[0]));
        assert_eq!(peek_message(fmt, &send), None, "{fmt}");
        assert_eq!(peek_message(fmt, b"\xff\xff\xff"), None, "{fmt}");
        assert_eq!(peek_message(fmt, b""), None, "{fmt}");
    }
    // JSON: key order, escapes and unknown keys do not matter; missing keys give None.
    assert_eq!(
        peek_message(
            Format::Json,
            br#"{"seq":3,"extra":[{"type":"ack"}],"conversation_id":"u:1:\u0032","type":"message"}"#
        ),
        Some(("u:1:2".to_string(), 3))
    );
    assert_eq!(
        peek_message(Format::Json, br#"{"type":"message","seq":3}"#),
        None
    );
    assert_eq!(
        peek_message(
            Format::Json,
            br#"{"type":"ack","conversation_id":"u:1:2","seq":3}"#
        ),
        None
    );
}

#[test]
fn peek_client_msg_id_both_formats() {
    let send = ClientFrame::Send {
        client_msg_id: "abc".into(),
        to_user: Some(0),
        to_group: Some(0),
        msg_type: MsgType::Text,
        content: String::new(),
        reply_to: None,
    };
    for fmt in Format::ALL {
        let bytes = encode_client(fmt, &send);
        assert_eq!(
            peek_client_msg_id(fmt, &bytes).as_deref(),
            Some("abc"),
            "{fmt}"
        );
        let ping = encode_client(fmt, &ClientFrame::Ping {});
        assert_eq!(peek_client_msg_id(fmt, &ping), None, "{fmt}");
    }
    // JSON that does not decode as a frame still yields its id.
    assert_eq!(
        peek_client_msg_id(
            Format::Json,
            br#"{"type":"send","client_msg_id":"c9","msg_type":"sticker","to_user":"x"}"#
        )
        .as_deref(),
        Some("c9")
    );
    // Unusable ids are not echoed.
    assert_eq!(
        peek_client_msg_id(Format::Json, br#"{"type":"send","client_msg_id":""}"#),
        None
    );
    let long = format!(r#"{{"type":"send","client_msg_id":"{}"}}"#, "a".repeat(65));
    assert_eq!(peek_client_msg_id(Format::Json, long.as_bytes()), None);
    assert_eq!(
        peek_client_msg_id(Format::Json, br#"{"client_msg_id":7}"#),
        None
    );
}

// ---------------------------------------------------------------------------------------
// Format and validate through decoding
// ---------------------------------------------------------------------------------------

#[test]
fn format_leaf_names() {
    assert_eq!(Format::from_leaf("json"), Some(Format::Json));
    assert_eq!(Format::from_leaf("pb"), Some(Format::Pb));
    for bad in ["", "JSON", "Pb", "protobuf", "json ", "+", "#"] {
        assert_eq!(Format::from_leaf(bad), None, "{bad:?}");
    }
    for f in Format::ALL {
        assert_eq!(Format::from_leaf(f.as_str()), Some(f));
        assert_eq!(f.to_string(), f.as_str());
    }
}

#[test]
fn decoded_frames_validate() {
    for (src, ok) in [
        (CLIENT_JSON[0], true),
        (CLIENT_JSON[1], true),
        (
            r#"{"type":"send","client_msg_id":"c","to_user":2,"to_group":3,"msg_type":"text","content":""}"#,
            false,
        ),
        (r#"{"type":"typing"}"#, false),
        (
            r#"{"type":"receipt","conversation_id":"u:2:1","seq":1,"kind":"read"}"#,
            false,
        ),
        (r#"{"type":"sync","limit":0}"#, false),
        (r#"{"type":"sync","limit":500}"#, true),
        (r#"{"type":"ping"}"#, true),
    ] {
        assert_eq!(ok_client(src).validate().is_ok(), ok, "{src}");
    }
}

#[test]
fn peek_reads_the_head_of_the_servers_own_json_frames() {
    use crate::codec::peek_json_head;
    // Every message the server encodes is answered from its head, the same as parsed.
    let mut frames = Vec::new();
    for (i, content) in [
        "",
        "plain",
        "quote \" and \\ and \u{1F600} and \n",
        "{\"type\":\"ack\"}",
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = sample_message(i as i64 + 1);
        m.id = [1, 9, 10, i64::MAX][i];
        m.seq = [1, 99, 123_456_789, i64::MAX][i];
        m.conversation_id = ["u:1:2", "g:77", "u:12345:67890", "g:1"][i].into();
        m.content = content.into();
        m.recalled = i % 2 == 1;
        m.reply_to = (i == 2).then_some(5);
        frames.push(m);
    }
    for m in frames {
        let expected = (m.conversation_id.clone(), m.seq);
        let bytes = encode_server(Format::Json, &ServerFrame::Message(m));
        assert_eq!(peek_json_head(&bytes), Some(Some(expected.clone())));
        assert_eq!(peek_message(Format::Json, &bytes), Some(expected));
    }
    // Every other frame the server encodes is known not to be a message from its tag.
    for src in SERVER_JSON {
        let f = decode_server(Format::Json, src.as_bytes()).expect(src);
        if matches!(f, ServerFrame::Message(_)) {
            continue;
        }
        let bytes = encode_server(Format::Json, &f);
        assert_eq!(peek_json_head(&bytes), Some(None), "{src}");
    }
    // Other layouts are left to the parser.
    for odd in [
        &br#"{"seq":3,"type":"message","conversation_id":"g:1"}"#[..],
        br#"{"type":"message","seq":3}"#,
        br#"{"type":"message","id":1,"conversation_id":"u:1:\u0032","seq":3}"#,
        br#"{"type":"message","id":,"conversation_id":"g:1","seq":3}"#,
        br#"{"type":"message","id":1,"conversation_id":"g:1","seq":3x"#,
        br#"{"type":"message","id":1,"conversation_id":"g:1","seq":99999999999999999999}"#,
        br#"{"type":"mess\u0061ge","id":1}"#,
        br#"{ "type":"message"}"#,
        b"",
    ] {
        assert_eq!(
            peek_json_head(odd),
            None,
            "{}",
            String::from_utf8_lossy(odd)
        );
    }
    assert_eq!(
        peek_message(
            Format::Json,
            br#"{"type":"message","id":1,"conversation_id":"u:1:\u0032","seq":3}"#
        ),
        Some(("u:1:2".to_string(), 3))
    );
}
