//! The frame model: what clients publish ([`ClientFrame`]) and what the server publishes
//! ([`ServerFrame`]).
//!
//! These types are the JSON form directly (serde, internally tagged by `type`) and convert
//! losslessly to and from the generated protobuf types in [`crate::pb`]. Decoding only checks
//! syntax and types; [`ClientFrame::validate`] checks the structural rules that do not need
//! server state or configuration (the server adds policy on top: friendship, membership,
//! content size, rate limits, ...).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cid::ConversationId;
use crate::error::FrameError;

/// Longest accepted `client_msg_id`, in characters.
pub const CLIENT_MSG_ID_MAX_CHARS: usize = 64;
/// Largest accepted `limit` of a `sync` frame.
pub const SYNC_LIMIT_MAX: u32 = 500;

/// Kind of a chat message. JSON: `"text"`, `"image"`, `"voice"`, `"video"`, `"file"`,
/// `"location"`, `"custom"`; protobuf: `MSG_TYPE_TEXT`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgType {
    /// Plain UTF-8 text.
    Text,
    /// An image; content refers to an uploaded file.
    Image,
    /// A voice clip; content refers to an uploaded file.
    Voice,
    /// A video; content refers to an uploaded file.
    Video,
    /// Any other file; content refers to an uploaded file.
    File,
    /// A location; content is application-defined.
    Location,
    /// Application-defined content, not interpreted by the server.
    Custom,
}

impl MsgType {
    /// Every message type, in protobuf enum order.
    pub const ALL: [MsgType; 7] = [
        MsgType::Text,
        MsgType::Image,
        MsgType::Voice,
        MsgType::Video,
        MsgType::File,
        MsgType::Location,
        MsgType::Custom,
    ];

    /// The JSON name: `"text"`, `"image"`, ... (also a good database representation).
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Text => "text",
            MsgType::Image => "image",
            MsgType::Voice => "voice",
            MsgType::Video => "video",
            MsgType::File => "file",
            MsgType::Location => "location",
            MsgType::Custom => "custom",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MsgType {
    type Err = FrameError;

    /// Parses the JSON name (`"text"`, ...), exactly as [`MsgType::as_str`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MsgType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| FrameError::invalid(format!("unknown `msg_type` {s:?}")))
    }
}

/// Kind of a receipt. JSON: `"delivered"`, `"read"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The messages reached the device.
    Delivered,
    /// The user read the messages.
    Read,
}

impl ReceiptKind {
    /// Every receipt kind, in protobuf enum order.
    pub const ALL: [ReceiptKind; 2] = [ReceiptKind::Delivered, ReceiptKind::Read];

    /// The JSON name: `"delivered"` or `"read"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

impl fmt::Display for ReceiptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReceiptKind {
    type Err = FrameError;

    /// Parses the JSON name (`"delivered"` or `"read"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReceiptKind::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| FrameError::invalid(format!("unknown receipt `kind` {s:?}")))
    }
}

/// A frame published by a client on `im/u/{uid}/out/{fmt}`.
///
/// JSON: an object whose `type` is the snake_case variant name; unknown keys are ignored and
/// absent optional fields are `None` (`null` is accepted for them too). Decoding does not
/// enforce the rules of [`ClientFrame::validate`]; call it before acting on a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// `{"type":"send","client_msg_id":"c1","to_user":2,"msg_type":"text","content":"hi"}`:
    /// send a chat message to exactly one of `to_user` or `to_group`.
    Send {
        /// Sender-chosen id, 1–64 characters, unique per sender (retries are idempotent).
        client_msg_id: String,
        /// Recipient user (one-to-one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_user: Option<i64>,
        /// Recipient group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_group: Option<i64>,
        /// Kind of message.
        msg_type: MsgType,
        /// Body; the server enforces its configured size limit.
        content: String,
        /// Id of the message replied to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<i64>,
    },
    /// `{"type":"receipt","conversation_id":"u:1:2","seq":5,"kind":"read"}`: messages up to
    /// `seq` were delivered to this device or read.
    Receipt {
        /// `u:{a}:{b}` or `g:{gid}`.
        conversation_id: String,
        /// Highest seq covered, at least 1.
        seq: i64,
        /// Delivered or read.
        kind: ReceiptKind,
    },
    /// `{"type":"typing","to_user":2}`: typing indication to exactly one of `to_user` or
    /// `to_group` (not stored).
    Typing {
        /// Recipient user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_user: Option<i64>,
        /// Recipient group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_group: Option<i64>,
    },
    /// `{"type":"recall","message_id":17}`: withdraw a message.
    Recall {
        /// Server id of the message.
        message_id: i64,
    },
    /// `{"type":"sync","conversation_id":"g:3","after_seq":10,"limit":50}`: fetch stored
    /// messages; every field is optional.
    Sync {
        /// Conversation to sync; `None` means all of the user's conversations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
        /// Only messages with a greater seq; `None` means from the start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<i64>,
        /// At most this many messages, 1–500; `None` means the server default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// `{"type":"ping"}`: liveness check, answered with [`ServerFrame::Pong`].
    Ping {},
}

impl ClientFrame {
    /// The JSON `type` of this frame (`"send"`, `"receipt"`, ...), for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Send { .. } => "send",
            ClientFrame::Receipt { .. } => "receipt",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Recall { .. } => "recall",
            ClientFrame::Sync { .. } => "sync",
            ClientFrame::Ping {} => "ping",
        }
    }

    /// The `client_msg_id` of a `send` frame, to echo in an `error` frame.
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send { client_msg_id, .. } => Some(client_msg_id),
            _ => None,
        }
    }

    /// Checks the structural rules that need no server state:
    ///
    /// - `client_msg_id` has 1–64 characters;
    /// - `send` and `typing` name exactly one of `to_user` and `to_group`;
    /// - ids (`to_user`, `to_group`, `reply_to`, `message_id`) are positive;
    /// - `conversation_id` is canonical `u:{a}:{b}` with `0 < a < b`, or `g:{gid}`;
    /// - a receipt's `seq` is at least 1; a sync's `after_seq` is not negative and its
    ///   `limit` is within 1–500.
    ///
    /// Content size is not checked here: the limit is server configuration.
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            ClientFrame::Send {
                client_msg_id,
                to_user,
                to_group,
                reply_to,
                ..
            } => {
                check_client_msg_id(client_msg_id)?;
                check_target(*to_user, *to_group)?;
                if let Some(r) = *reply_to {
                    check_positive("reply_to", r)?;
                }
                Ok(())
            }
            ClientFrame::Receipt {
                conversation_id,
                seq,
                ..
            } => {
                ConversationId::parse(conversation_id)?;
                if *seq < 1 {
                    return Err(FrameError::invalid(format!(
                        "`seq` must be at least 1, got {seq}"
                    )));
                }
                Ok(())
            }
            ClientFrame::Typing { to_user, to_group } => check_target(*to_user, *to_group),
            ClientFrame::Recall { message_id } => check_positive("message_id", *message_id),
            ClientFrame::Sync {
                conversation_id,
                after_seq,
                limit,
            } => {
                if let Some(c) = conversation_id {
                    ConversationId::parse(c)?;
                }
                if let Some(a) = *after_seq {
                    if a < 0 {
                        return Err(FrameError::invalid(format!(
                            "`after_seq` must not be negative, got {a}"
                        )));
                    }
                }
                if let Some(l) = *limit {
                    if !(1..=SYNC_LIMIT_MAX).contains(&l) {
                        return Err(FrameError::invalid(format!(
                            "`limit` must be between 1 and {SYNC_LIMIT_MAX}, got {l}"
                        )));
                    }
                }
                Ok(())
            }
            ClientFrame::Ping {} => Ok(()),
        }
    }
}

fn check_client_msg_id(id: &str) -> Result<(), FrameError> {
    if id.is_empty() {
        return Err(FrameError::invalid("`client_msg_id` must not be empty"));
    }
    if id.chars().count() > CLIENT_MSG_ID_MAX_CHARS {
        return Err(FrameError::invalid(format!(
            "`client_msg_id` must be at most {CLIENT_MSG_ID_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

fn check_target(to_user: Option<i64>, to_group: Option<i64>) -> Result<(), FrameError> {
    match (to_user, to_group) {
        (Some(u), None) => check_positive("to_user", u),
        (None, Some(g)) => check_positive("to_group", g),
        (Some(_), Some(_)) => Err(FrameError::invalid(
            "set exactly one of `to_user` and `to_group`, not both",
        )),
        (None, None) => Err(FrameError::invalid(
            "one of `to_user` and `to_group` is required",
        )),
    }
}

fn check_positive(field: &str, v: i64) -> Result<(), FrameError> {
    if v > 0 {
        Ok(())
    } else {
        Err(FrameError::invalid(format!(
            "`{field}` must be a positive id, got {v}"
        )))
    }
}

/// A stored chat message: the body of a `message` frame and the elements of
/// `sync_result.messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    /// Server id of the message.
    pub id: i64,
    /// Conversation id, `u:{a}:{b}` or `g:{gid}`.
    pub conversation_id: String,
    /// Position in the conversation: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// Sender user id.
    pub from: i64,
    /// Recipient user, for one-to-one messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user: Option<i64>,
    /// Recipient group, for group messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_group: Option<i64>,
    /// Kind of message.
    pub msg_type: MsgType,
    /// Body.
    pub content: String,
    /// The sender's `client_msg_id`.
    pub client_msg_id: String,
    /// Time stored, Unix milliseconds.
    pub created_at: i64,
    /// Id of the message replied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    /// The message was withdrawn. Omitted from JSON when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recalled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A frame published by the server on `im/u/{uid}/in/{fmt}` or `im/g/{gid}/in/{fmt}`.
///
/// JSON: an object whose `type` is the snake_case variant name (`message`, `ack`, `error`,
/// `receipt`, `typing`, `recall`, `sync_result`, `pong`, `event`); `None` fields are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A chat message; its fields appear directly in the frame object next to `type`.
    Message(MessageFrame),
    /// A `send` was durably stored.
    Ack {
        /// The `client_msg_id` of the `send`.
        client_msg_id: String,
        /// Server id of the stored message.
        id: i64,
        /// Conversation of the message.
        conversation_id: String,
        /// Seq of the message.
        seq: i64,
        /// Time stored, Unix milliseconds.
        created_at: i64,
    },
    /// A client frame was refused; see [`ServerFrame::error`] and
    /// [`FrameError::to_server_frame`].
    Error {
        /// The refused `send`'s `client_msg_id`, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// snake_case code: `bad_frame`, `not_friends`, `blocked`, `not_member`, ...
        code: String,
        /// Human-readable explanation.
        message: String,
    },
    /// User `from` received or read the conversation up to `seq`.
    Receipt {
        /// Conversation id.
        conversation_id: String,
        /// Highest seq covered.
        seq: i64,
        /// Delivered or read.
        kind: ReceiptKind,
        /// User who sent the receipt.
        from: i64,
    },
    /// User `from` is typing.
    Typing {
        /// User who is typing.
        from: i64,
        /// Set for one-to-one conversations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_user: Option<i64>,
        /// Set for group conversations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_group: Option<i64>,
        /// Conversation id.
        conversation_id: String,
    },
    /// Message `message_id` was withdrawn by user `by`.
    Recall {
        /// Server id of the message.
        message_id: i64,
        /// Conversation of the message.
        conversation_id: String,
        /// Seq of the message.
        seq: i64,
        /// User who withdrew it.
        by: i64,
    },
    /// Answer to a `sync`.
    SyncResult {
        /// Messages in ascending seq order within each conversation.
        #[serde(default)]
        messages: Vec<MessageFrame>,
        /// More messages are available after the last one.
        #[serde(default)]
        has_more: bool,
        /// The conversation the `sync` asked for, if it named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// Answer to a `ping`.
    Pong {},
    /// A notification (`FRIEND_INVITE`, `GROUP_KICKED`, `SYSTEM_NOTICE`, ...). In protobuf,
    /// `data` travels as JSON text.
    Event {
        /// Event name, upper case.
        event: String,
        /// Details; any JSON value (`null` when absent).
        #[serde(default)]
        data: serde_json::Value,
    },
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(
        client_msg_id: Option<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ServerFrame::Error {
            client_msg_id,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The JSON `type` of this frame (`"message"`, `"ack"`, ...), for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Message(_) => "message",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Receipt { .. } => "receipt",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Recall { .. } => "recall",
            ServerFrame::SyncResult { .. } => "sync_result",
            ServerFrame::Pong {} => "pong",
            ServerFrame::Event { .. } => "event",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(to_user: Option<i64>, to_group: Option<i64>, id: &str) -> ClientFrame {
        ClientFrame::Send {
            client_msg_id: id.into(),
            to_user,
            to_group,
            msg_type: MsgType::Text,
            content: String::new(),
            reply_to: None,
        }
    }

    fn assert_invalid(f: &ClientFrame, needle: &str) {
        match f.validate() {
            Err(FrameError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("{f:?}: expected Invalid containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn send_rules() {
        assert_eq!(send(Some(2), None, "c1").validate(), Ok(()));
        assert_eq!(send(None, Some(3), "c1").validate(), Ok(()));
        assert_invalid(&send(Some(2), Some(3), "c1"), "not both");
        assert_invalid(&send(None, None, "c1"), "required");
        assert_invalid(&send(Some(0), None, "c1"), "to_user");
        assert_invalid(&send(None, Some(-4), "c1"), "to_group");
        assert_invalid(&send(Some(2), None, ""), "client_msg_id");
        // 64 characters (multi-byte) are fine, 65 are not.
        assert_eq!(send(Some(2), None, &"é".repeat(64)).validate(), Ok(()));
        assert_invalid(&send(Some(2), None, &"a".repeat(65)), "client_msg_id");
        let mut with_reply = send(Some(2), None, "c1");
        if let ClientFrame::Send { reply_to, .. } = &mut with_reply {
            *reply_to = Some(0);
        }
        assert_invalid(&with_reply, "reply_to");
    }

    #[test]
    fn receipt_rules() {
        let r = |cid: &str, seq| ClientFrame::Receipt {
            conversation_id: cid.into(),
            seq,
            kind: ReceiptKind::Read,
        };
        assert_eq!(r("u:1:2", 1).validate(), Ok(()));
        assert_eq!(r("g:9", 100).validate(), Ok(()));
        assert_invalid(&r("u:1:2", 0), "seq");
        assert_invalid(&r("u:2:1", 3), "conversation_id");
        assert_invalid(&r("x", 3), "conversation_id");
    }

    #[test]
    fn typing_recall_ping_rules() {
        let t = |u, g| ClientFrame::Typing {
            to_user: u,
            to_group: g,
        };
        assert_eq!(t(Some(1), None).validate(), Ok(()));
        assert_eq!(t(None, Some(1)).validate(), Ok(()));
        assert_invalid(&t(None, None), "required");
        assert_invalid(&t(Some(1), Some(1)), "not both");
        assert_invalid(&t(Some(-1), None), "to_user");
        assert_eq!(ClientFrame::Recall { message_id: 1 }.validate(), Ok(()));
        assert_invalid(&ClientFrame::Recall { message_id: 0 }, "message_id");
        assert_eq!(ClientFrame::Ping {}.validate(), Ok(()));
    }

    #[test]
    fn sync_rules() {
        let s = |c: Option<&str>, a, l| ClientFrame::Sync {
            conversation_id: c.map(str::to_owned),
            after_seq: a,
            limit: l,
        };
        assert_eq!(s(None, None, None).validate(), Ok(()));
        assert_eq!(s(Some("g:1"), Some(0), Some(1)).validate(), Ok(()));
        assert_eq!(s(Some("u:1:5"), Some(7), Some(500)).validate(), Ok(()));
        assert_invalid(&s(None, None, Some(0)), "limit");
        assert_invalid(&s(None, None, Some(501)), "limit");
        assert_invalid(&s(None, Some(-1), None), "after_seq");
        assert_invalid(&s(Some("g:0"), None, None), "conversation_id");
    }

    #[test]
    fn enum_names() {
        for t in MsgType::ALL {
            assert_eq!(t.as_str().parse::<MsgType>(), Ok(t));
            assert_eq!(
                serde_json::to_string(&t).ok(),
                Some(format!("\"{}\"", t.as_str()))
            );
        }
        for k in ReceiptKind::ALL {
            assert_eq!(k.as_str().parse::<ReceiptKind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).ok(),
                Some(format!("\"{}\"", k.as_str()))
            );
        }
        assert!("Text".parse::<MsgType>().is_err());
        assert!("seen".parse::<ReceiptKind>().is_err());
    }

    #[test]
    fn kinds_and_helpers() {
        assert_eq!(send(Some(1), None, "x").kind(), "send");
        assert_eq!(send(Some(1), None, "x").client_msg_id(), Some("x"));
        assert_eq!(ClientFrame::Ping {}.client_msg_id(), None);
        assert_eq!(ServerFrame::Pong {}.kind(), "pong");
        assert_eq!(ServerFrame::error(None, "blocked", "no").kind(), "error");
    }
}
