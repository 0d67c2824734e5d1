//! Conversions between the frame model and the generated protobuf types.
//!
//! Model → protobuf is infallible. Protobuf → model fails ([`FrameError`]) where protobuf is
//! looser than the model: an unset `frame` oneof, an enum that is `*_UNSPECIFIED` or unknown
//! to this version, or event `data` that is not JSON text.

use crate::error::FrameError;
use crate::frames::{ClientFrame, MessageFrame, MsgType, ReceiptKind, ServerFrame};
use crate::pb;
use crate::pb::{client_frame as cf, server_frame as sf};

impl From<MsgType> for pb::MsgType {
    fn from(t: MsgType) -> Self {
        match t {
            MsgType::Text => pb::MsgType::Text,
            MsgType::Image => pb::MsgType::Image,
            MsgType::Voice => pb::MsgType::Voice,
            MsgType::Video => pb::MsgType::Video,
            MsgType::File => pb::MsgType::File,
            MsgType::Location => pb::MsgType::Location,
            MsgType::Custom => pb::MsgType::Custom,
        }
    }
}

impl TryFrom<pb::MsgType> for MsgType {
    type Error = FrameError;

    fn try_from(t: pb::MsgType) -> Result<Self, FrameError> {
        Ok(match t {
            pb::MsgType::Unspecified => {
                return Err(FrameError::invalid(
                    "`msg_type` is missing or MSG_TYPE_UNSPECIFIED",
                ))
            }
            pb::MsgType::Text => MsgType::Text,
            pb::MsgType::Image => MsgType::Image,
            pb::MsgType::Voice => MsgType::Voice,
            pb::MsgType::Video => MsgType::Video,
            pb::MsgType::File => MsgType::File,
            pb::MsgType::Location => MsgType::Location,
            pb::MsgType::Custom => MsgType::Custom,
        })
    }
}

impl From<ReceiptKind> for pb::ReceiptKind {
    fn from(k: ReceiptKind) -> Self {
        match k {
            ReceiptKind::Delivered => pb::ReceiptKind::Delivered,
            ReceiptKind::Read => pb::ReceiptKind::Read,
        }
    }
}

impl TryFrom<pb::ReceiptKind> for ReceiptKind {
    type Error = FrameError;

    fn try_from(k: pb::ReceiptKind) -> Result<Self, FrameError> {
        match k {
            pb::ReceiptKind::Unspecified => Err(FrameError::invalid(
                "receipt `kind` is missing or RECEIPT_KIND_UNSPECIFIED",
            )),
            pb::ReceiptKind::Delivered => Ok(ReceiptKind::Delivered),
            pb::ReceiptKind::Read => Ok(ReceiptKind::Read),
        }
    }
}

/// Maps a raw protobuf `msg_type` value (prost keeps enums as `i32`).
fn msg_type(raw: i32) -> Result<MsgType, FrameError> {
    pb::MsgType::try_from(raw)
        .map_err(|_| FrameError::invalid(format!("unknown `msg_type` value {raw}")))?
        .try_into()
}

/// Maps a raw protobuf receipt `kind` value.
fn receipt_kind(raw: i32) -> Result<ReceiptKind, FrameError> {
    pb::ReceiptKind::try_from(raw)
        .map_err(|_| FrameError::invalid(format!("unknown receipt `kind` value {raw}")))?
        .try_into()
}

impl From<ClientFrame> for pb::ClientFrame {
    fn from(f: ClientFrame) -> Self {
        let frame = match f {
            ClientFrame::Send {
                client_msg_id,
                to_user,
                to_group,
                msg_type,
                content,
                reply_to,
            } => cf::Frame::Send(cf::Send {
                client_msg_id,
                to_user,
                to_group,
                msg_type: pb::MsgType::from(msg_type).into(),
                content,
                reply_to,
            }),
            ClientFrame::Receipt {
                conversation_id,
                seq,
                kind,
            } => cf::Frame::Receipt(cf::Receipt {
                conversation_id,
                seq,
                kind: pb::ReceiptKind::from(kind).into(),
            }),
            ClientFrame::Typing { to_user, to_group } => {
                cf::Frame::Typing(cf::Typing { to_user, to_group })
            }
            ClientFrame::Recall { message_id } => cf::Frame::Recall(cf::Recall { message_id }),
            ClientFrame::Sync {
                conversation_id,
                after_seq,
                limit,
            } => cf::Frame::Sync(cf::Sync {
                conversation_id,
                after_seq,
                limit,
            }),
            ClientFrame::Ping {} => cf::Frame::Ping(cf::Ping {}),
        };
        pb::ClientFrame { frame: Some(frame) }
    }
}

impl TryFrom<pb::ClientFrame> for ClientFrame {
    type Error = FrameError;

    fn try_from(f: pb::ClientFrame) -> Result<Self, FrameError> {
        Ok(match f.frame.ok_or(FrameError::NoFrameKind)? {
            cf::Frame::Send(s) => ClientFrame::Send {
                client_msg_id: s.client_msg_id,
                to_user: s.to_user,
                to_group: s.to_group,
                msg_type: msg_type(s.msg_type)?,
                content: s.content,
                reply_to: s.reply_to,
            },
            cf::Frame::Receipt(r) => ClientFrame::Receipt {
                conversation_id: r.conversation_id,
                seq: r.seq,
                kind: receipt_kind(r.kind)?,
            },
            cf::Frame::Typing(t) => ClientFrame::Typing {
                to_user: t.to_user,
                to_group: t.to_group,
            },
            cf::Frame::Recall(r) => ClientFrame::Recall {
                message_id: r.message_id,
            },
            cf::Frame::Sync(s) => ClientFrame::Sync {
                conversation_id: s.conversation_id,
                after_seq: s.after_seq,
                limit: s.limit,
            },
            cf::Frame::Ping(cf::Ping {}) => ClientFrame::Ping {},
        })
    }
}

impl From<MessageFrame> for pb::MessageFrame {
    fn from(m: MessageFrame) -> Self {
        pb::MessageFrame {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            from: m.from,
            to_user: m.to_user,
            to_group: m.to_group,
            msg_type: pb::MsgType::from(m.msg_type).into(),
            content: m.content,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
            reply_to: m.reply_to,
            recalled: m.recalled,
        }
    }
}

impl TryFrom<pb::MessageFrame> for MessageFrame {
    type Error = FrameError;

    fn try_from(m: pb::MessageFrame) -> Result<Self, FrameError> {
        Ok(MessageFrame {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            from: m.from,
            to_user: m.to_user,
            to_group: m.to_group,
            msg_type: msg_type(m.msg_type)?,
            content: m.content,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
            reply_to: m.reply_to,
            recalled: m.recalled,
        })
    }
}

impl From<ServerFrame> for pb::ServerFrame {
    fn from(f: ServerFrame) -> Self {
        let frame = match f {
            ServerFrame::Message(m) => sf::Frame::Message(m.into()),
            ServerFrame::Ack {
                client_msg_id,
                id,
                conversation_id,
                seq,
                created_at,
            } => sf::Frame::Ack(sf::Ack {
                client_msg_id,
                id,
                conversation_id,
                seq,
                created_at,
            }),
            ServerFrame::Error {
                client_msg_id,
                code,
                message,
            } => sf::Frame::Error(sf::Error {
                client_msg_id,
                code,
                message,
            }),
            ServerFrame::Receipt {
                conversation_id,
                seq,
                kind,
                from,
            } => sf::Frame::Receipt(sf::Receipt {
                conversation_id,
                seq,
                kind: pb::ReceiptKind::from(kind).into(),
                from,
            }),
            ServerFrame::Typing {
                from,
                to_user,
                to_group,
                conversation_id,
            } => sf::Frame::Typing(sf::Typing {
                from,
                to_user,
                to_group,
                conversation_id,
            }),
            ServerFrame::Recall {
                message_id,
                conversation_id,
                seq,
                by,
            } => sf::Frame::Recall(sf::Recall {
                message_id,
                conversation_id,
                seq,
                by,
            }),
            ServerFrame::SyncResult {
                messages,
                has_more,
                conversation_id,
            } => sf::Frame::SyncResult(sf::SyncResult {
                messages: messages.into_iter().map(Into::into).collect(),
                has_more,
                conversation_id,
            }),
            ServerFrame::Pong {} => sf::Frame::Pong(sf::Pong {}),
            ServerFrame::Event { event, data } => sf::Frame::Event(sf::Event {
                event,
                // `Value`'s Display is its compact JSON text and cannot fail.
                data: data.to_string(),
            }),
        };
        pb::ServerFrame { frame: Some(frame) }
    }
}

impl TryFrom<pb::ServerFrame> for ServerFrame {
    type Error = FrameError;

    fn try_from(f: pb::ServerFrame) -> Result<Self, FrameError> {
        Ok(match f.frame.ok_or(FrameError::NoFrameKind)? {
            sf::Frame::Message(m) => ServerFrame::Message(m.try_into()?),
            sf::Frame::Ack(a) => ServerFrame::Ack {
                client_msg_id: a.client_msg_id,
                id: a.id,
                conversation_id: a.conversation_id,
                seq: a.seq,
                created_at: a.created_at,
            },
            sf::Frame::Error(e) => ServerFrame::Error {
                client_msg_id: e.client_msg_id,
                code: e.code,
                message: e.message,
            },
            sf::Frame::Receipt(r) => ServerFrame::Receipt {
                conversation_id: r.conversation_id,
                seq: r.seq,
                kind: receipt_kind(r.kind)?,
                from: r.from,
            },
            sf::Frame::Typing(t) => ServerFrame::Typing {
                from: t.from,
                to_user: t.to_user,
                to_group: t.to_group,
                conversation_id: t.conversation_id,
            },
            sf::Frame::Recall(r) => ServerFrame::Recall {
                message_id: r.message_id,
                conversation_id: r.conversation_id,
                seq: r.seq,
                by: r.by,
            },
            sf::Frame::SyncResult(s) => ServerFrame::SyncResult {
                messages: s
                    .messages
                    .into_iter()
                    .map(MessageFrame::try_from)
                    .collect::<Result<_, _>>()?,
                has_more: s.has_more,
                conversation_id: s.conversation_id,
            },
            sf::Frame::Pong(sf::Pong {}) => ServerFrame::Pong {},
            sf::Frame::Event(e) => ServerFrame::Event {
                event: e.event,
                data: if e.data.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&e.data).map_err(|err| {
                        FrameError::invalid(format!("event `data` is not valid JSON text: {err}"))
                    })?
                },
            },
        })
    }
}
