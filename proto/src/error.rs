//! The one error type of this crate.
//!
//! Every message is written to be sent back verbatim to the client that published the bad
//! frame (in an `error` frame with code [`FrameError::CODE`]), so it names the offending
//! field in plain words and never echoes an unbounded amount of client input.

use crate::frames::ServerFrame;

/// Longest message kept from an underlying decoder error, in characters. Decoder messages may
/// quote client input (an unknown variant name, say); capping them keeps error frames small.
const MAX_DETAIL_CHARS: usize = 200;

/// Why a frame could not be decoded, or why a decoded [`ClientFrame`](crate::ClientFrame) is
/// structurally invalid.
///
/// `Display` gives a human-readable English message suitable for the `message` of an
/// `error` frame whose `code` is [`FrameError::CODE`] (`"bad_frame"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload is not a JSON object, is malformed JSON or invalid UTF-8, or does not match
    /// any frame (unknown `type`, missing field, wrong field type, ...).
    #[error("invalid JSON frame: {0}")]
    Json(String),
    /// The payload is not a valid protobuf encoding of the frame message.
    #[error("invalid protobuf frame: {0}")]
    Protobuf(String),
    /// A protobuf frame with no field of the `frame` oneof set: an empty payload, or a frame
    /// kind unknown to this version.
    #[error("protobuf frame has no frame kind set (empty payload or unknown frame kind)")]
    NoFrameKind,
    /// The frame decoded but breaks a rule: a missing or unspecified enum value, an id that is
    /// not positive, a malformed conversation id, an out-of-range limit, ...
    #[error("{0}")]
    Invalid(String),
}

impl FrameError {
    /// The `code` of the `error` frame to answer a bad frame with: `"bad_frame"`.
    pub const CODE: &'static str = "bad_frame";

    /// Builds the `error` frame ([`ServerFrame::Error`], code `"bad_frame"`) that reports
    /// this error to the client, echoing `client_msg_id` when it is known (see
    /// [`peek_client_msg_id`](crate::peek_client_msg_id)).
    pub fn to_server_frame(&self, client_msg_id: Option<String>) -> ServerFrame {
        ServerFrame::error(client_msg_id, Self::CODE, self.to_string())
    }

    pub(crate) fn json(e: &serde_json::Error) -> Self {
        FrameError::Json(cap(e.to_string()))
    }

    pub(crate) fn protobuf(e: &prost::DecodeError) -> Self {
        FrameError::Protobuf(cap(e.to_string()))
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        FrameError::Invalid(cap(msg.into()))
    }
}

/// Shortens `s` to at most [`MAX_DETAIL_CHARS`] characters (on a character boundary).
fn cap(mut s: String) -> String {
    if let Some((idx, _)) = s.char_indices().nth(MAX_DETAIL_CHARS) {
        s.truncate(idx);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let e = FrameError::invalid("é".repeat(10_000));
        let FrameError::Invalid(msg) = &e else {
            panic!("wrong variant: {e:?}");
        };
        assert_eq!(msg.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(msg.ends_with('…'));
        let short = FrameError::invalid("short");
        assert_eq!(short.to_string(), "short");
    }

    #[test]
    fn error_frame_uses_bad_frame_code() {
        let f = FrameError::NoFrameKind.to_server_frame(Some("c1".into()));
        match f {
            ServerFrame::Error {
                client_msg_id,
                code,
                message,
            } => {
                assert_eq!(client_msg_id.as_deref(), Some("c1"));
                assert_eq!(code, "bad_frame");
                assert!(message.contains("no frame kind"));
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}
