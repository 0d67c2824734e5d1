//! Encoding and decoding of MQTT payloads in either format, and cheap peeks into payloads.
//!
//! Decoders take untrusted bytes and must never panic: serde_json and prost both return
//! errors for malformed input, serde_json caps nesting depth (128) so hostile nesting cannot
//! overflow the stack, and this schema has no recursive messages. Encoders cannot fail for
//! these types, so they return plain bytes.

use std::borrow::Cow;
use std::fmt;

use prost::Message as _;
use serde::Deserialize;

use crate::error::FrameError;
use crate::frames::{ClientFrame, ServerFrame, CLIENT_MSG_ID_MAX_CHARS};
use crate::pb;

/// Payload format, the last level of an `im/...` topic: `json` or `pb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// UTF-8 JSON object with a `type` key (topic leaf `json`).
    Json,
    /// Protobuf `mqim.v1.ClientFrame` / `mqim.v1.ServerFrame` (topic leaf `pb`).
    Pb,
}

impl Format {
    /// Every format, JSON first.
    pub const ALL: [Format; 2] = [Format::Json, Format::Pb];

    /// The format named by a topic's last level: `"json"` or `"pb"` (exact, lower case).
    pub fn from_leaf(leaf: &str) -> Option<Format> {
        match leaf {
            "json" => Some(Format::Json),
            "pb" => Some(Format::Pb),
            _ => None,
        }
    }

    /// The topic leaf: `"json"` or `"pb"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Pb => "pb",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes a frame published by a client. Never panics, whatever the bytes.
///
/// JSON payloads must be a single object (leading whitespace allowed); unknown keys are
/// ignored. This checks syntax and types only: call [`ClientFrame::validate`] before acting
/// on the frame. On error, answer with [`FrameError::to_server_frame`], echoing
/// [`peek_client_msg_id`] when it finds one.
pub fn decode_client(fmt: Format, bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    match fmt {
        Format::Json => from_json(bytes),
        Format::Pb => pb::ClientFrame::decode(bytes)
            .map_err(|e| FrameError::protobuf(&e))?
            .try_into(),
    }
}

/// Encodes a frame as a client publishes it.
pub fn encode_client(fmt: Format, frame: &ClientFrame) -> Vec<u8> {
    match fmt {
        Format::Json => to_json(frame),
        Format::Pb => pb::ClientFrame::from(frame.clone()).encode_to_vec(),
    }
}

/// Encodes a frame for publishing by the server.
pub fn encode_server(fmt: Format, frame: &ServerFrame) -> Vec<u8> {
    match fmt {
        Format::Json => to_json(frame),
        Format::Pb => pb::ServerFrame::from(frame.clone()).encode_to_vec(),
    }
}

/// Decodes a frame published by the server (for clients, tests and tools). Never panics.
pub fn decode_server(fmt: Format, bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    match fmt {
        Format::Json => from_json(bytes),
        Format::Pb => pb::ServerFrame::decode(bytes)
            .map_err(|e| FrameError::protobuf(&e))?
            .try_into(),
    }
}

/// Deserializes a JSON object. Anything else (arrays, scalars) is refused up front: serde's
/// internally tagged enums would otherwise also accept a sequence like `["ping"]`.
fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    match bytes.iter().find(|b| !b" \t\r\n".contains(b)) {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| FrameError::json(&e)),
        Some(_) => Err(FrameError::Json("a frame must be a JSON object".into())),
        None => Err(FrameError::Json("empty payload".into())),
    }
}

/// Serializes to JSON bytes. Cannot fail for the frame types: every map key is a string and
/// `serde_json::Value` holds no non-finite numbers.
fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    match serde_json::to_vec(v) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug_assert!(false, "frame JSON serialization failed: {e}");
            br#"{"type":"error","code":"internal","message":"frame could not be encoded"}"#.to_vec()
        }
    }
}

/// `(conversation_id, seq)` of a server `message` frame, without decoding the rest.
///
/// Meant for the delivery hot path, to learn from a payload that a device acknowledged
/// (QoS 1 PUBACK) which message it now has. `None` for any other frame kind and for
/// payloads that are not a well-formed message frame of `fmt`. It does not check the
/// conversation id's syntax. The payloads are the server's own: a JSON frame as
/// [`encode_server`] writes it is read from its head (see [`peek_json_head`]), and only
/// other layouts are parsed.
pub fn peek_message(fmt: Format, payload: &[u8]) -> Option<(String, i64)> {
    match fmt {
        Format::Json => {
            if let Some(head) = peek_json_head(payload) {
                return head;
            }
            #[derive(Deserialize)]
            struct Peek<'a> {
                #[serde(rename = "type", borrow)]
                kind: Cow<'a, str>,
                #[serde(borrow)]
                conversation_id: Option<Cow<'a, str>>,
                seq: Option<i64>,
            }
            let p: Peek<'_> = from_json(payload).ok()?;
            if p.kind != "message" {
                return None;
            }
            Some((p.conversation_id?.into_owned(), p.seq?))
        }
        Format::Pb => {
            let m = PeekServerFrame::decode(payload).ok()?.message?;
            (!m.conversation_id.is_empty()).then_some((m.conversation_id, m.seq))
        }
    }
}

/// What [`peek_message`] answers for a JSON frame laid out as [`encode_server`] writes
/// it, read from its first bytes; `None` (parse it) for any other layout.
///
/// serde writes the tag first and a message's fields in declaration order, so every
/// `message` frame begins `{"type":"message","id":N,"conversation_id":"…","seq":N,`;
/// every other frame begins `{"type":"<kind>"`. Reading those bytes instead of parsing
/// the frame, most of which is its content, is done once per PUBACK of a message, ack or
/// event frame.
pub(crate) fn peek_json_head(payload: &[u8]) -> Option<Option<(String, i64)>> {
    fn digits(b: &[u8]) -> usize {
        b.iter().take_while(|c| c.is_ascii_digit()).count()
    }
    let rest = payload.strip_prefix(br#"{"type":""#)?;
    let Some(rest) = rest.strip_prefix(br#"message","id":"#) else {
        // Another kind, if its tag is a plain word (as every tag is) and not "message".
        let end = rest.iter().position(|&c| c == b'"')?;
        let word = rest[..end]
            .iter()
            .all(|c| c.is_ascii_lowercase() || *c == b'_');
        return (word && &rest[..end] != b"message").then_some(None);
    };
    let n = digits(rest);
    let rest = rest.get(n..)?.strip_prefix(br#","conversation_id":""#)?;
    let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
    if n == 0 || rest[end] != b'"' {
        return None;
    }
    let cid = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end + 1..].strip_prefix(br#","seq":"#)?;
    let n = digits(rest);
    if n == 0 || !matches!(rest.get(n), Some(b',' | b'}')) {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
    Some(Some((cid.to_owned(), seq)))
}

/// The `client_msg_id` of a client payload that may not decode or validate as a whole, so
/// that the `error` frame answering it can name the send it refuses.
///
/// Best effort: `Some` only when the payload is syntactically valid for `fmt` (JSON: an
/// object; protobuf: a `send` frame) and carries a non-empty `client_msg_id` string of at
/// most 64 characters. Other fields are not looked at.
pub fn peek_client_msg_id(fmt: Format, payload: &[u8]) -> Option<String> {
    let id = match fmt {
        Format::Json => {
            #[derive(Deserialize)]
            struct Peek {
                client_msg_id: Option<String>,
            }
            // Other keys are skipped unparsed (beyond syntax); a `client_msg_id` that is not
            // a string makes the peek fail, which yields `None` as wanted.
            from_json::<Peek>(payload).ok()?.client_msg_id?
        }
        Format::Pb => PeekClientFrame::decode(payload).ok()?.send?.client_msg_id,
    };
    let chars = id.chars().count();
    (1..=CLIENT_MSG_ID_MAX_CHARS).contains(&chars).then_some(id)
}

/// Subset of `mqim.v1.ServerFrame` for [`peek_message`]: only the `message` kind (tag 1),
/// and only its `conversation_id` (2) and `seq` (3); prost skips every other field without
/// allocating. Tags must match `mqim.proto` (checked by tests).
#[derive(Clone, PartialEq, prost::Message)]
struct PeekServerFrame {
    #[prost(message, optional, tag = "1")]
    message: Option<PeekMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PeekMessage {
    #[prost(string, tag = "2")]
    conversation_id: String,
    #[prost(int64, tag = "3")]
    seq: i64,
}

/// Subset of `mqim.v1.ClientFrame` for [`peek_client_msg_id`]: the `send` kind (tag 1) and
/// its `client_msg_id` (1).
#[derive(Clone, PartialEq, prost::Message)]
struct PeekClientFrame {
    #[prost(message, optional, tag = "1")]
    send: Option<PeekSend>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PeekSend {
    #[prost(string, tag = "1")]
    client_msg_id: String,
}
