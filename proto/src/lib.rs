//! mqim wire frames, in JSON and protobuf, field for field the same.
//!
//! Clients publish [`ClientFrame`]s on `im/u/{uid}/out/{fmt}`; the server publishes
//! [`ServerFrame`]s on `im/u/{uid}/in/{fmt}` and `im/g/{gid}/in/{fmt}`, where `{fmt}` is a
//! [`Format`]: `json` or `pb`. This crate is the only place that knows the encodings; the
//! server and tests work with the model types and call [`decode_client`] /
//! [`encode_server`] (clients: [`encode_client`] / [`decode_server`]).
//!
//! # Why it is built this way
//!
//! - **Two formats, one model.** JSON is for people debugging with `mosquitto_pub` and for
//!   web clients; protobuf is for mobile apps and devices that care about bytes. The model
//!   types in this crate *are* the JSON form (serde, internally tagged by `type`, optional
//!   fields omitted when absent, unknown keys ignored), and they convert losslessly to and
//!   from the protobuf types in [`pb`]. The JSON `type` of a frame is the name of the field
//!   set in the protobuf `frame` oneof; every other key has its protobuf field's name; enum
//!   values are lower-case names (`"text"`, `"read"`) in JSON and `MSG_TYPE_TEXT`,
//!   `RECEIPT_KIND_READ` in protobuf. The one deliberate difference: an `event` frame's
//!   `data` is an embedded JSON value in JSON and JSON *text* (a string) in protobuf, since
//!   it is free-form.
//! - **Hand-written model, generated protobuf.** prost's types keep enums as `i32`, wrap the
//!   frame kinds in an `Option<oneof>` and know nothing of the JSON shape, so exposing them
//!   would push protobuf's looseness (unset oneof, unspecified enum values) into the server.
//!   The model makes those states unrepresentable, and the conversion rejects them.
//! - **No system `protoc`.** `build.rs` parses `mqim.proto` with `protox` (pure Rust) and
//!   feeds the descriptor set to `prost-build`, so `cargo build` needs nothing installed.
//!   `mqim.proto` is the documented contract for client developers.
//! - **Decoding never panics.** Payloads come from the network; every decoding path returns
//!   [`FrameError`], whose message is fit to send back in an `error` frame with code
//!   `bad_frame` ([`FrameError::to_server_frame`]).
//! - **Syntax and structure are separate.** Decoding checks that a payload is a frame;
//!   [`ClientFrame::validate`] checks the rules that need no state (id ranges, exactly one
//!   recipient, conversation id syntax, limits). Policy that needs the database or
//!   configuration (friendship, membership, content size) belongs to the server.
//! - **Peeks for hot paths.** [`peek_message`] reads only `(conversation_id, seq)` from an
//!   encoded `message` frame, to learn which message a device acknowledged without decoding
//!   it; [`peek_client_msg_id`] recovers the id of a refused `send` for its error frame.

#![warn(missing_docs)]

mod cid;
mod codec;
mod convert;
mod error;
mod frames;

/// Protobuf types generated from `mqim.proto` (package `mqim.v1`) by prost.
///
/// Prefer the model types at the crate root; these are exposed for code that needs the raw
/// protobuf messages. Convert with `From`/`TryFrom` (model → pb is infallible).
#[allow(missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/mqim.v1.rs"));
}

pub use cid::ConversationId;
pub use codec::{
    decode_client, decode_server, encode_client, encode_server, peek_client_msg_id, peek_message,
    Format,
};
pub use error::FrameError;
pub use frames::{
    ClientFrame, MessageFrame, MsgType, ReceiptKind, ServerFrame, CLIENT_MSG_ID_MAX_CHARS,
    SYNC_LIMIT_MAX,
};

#[cfg(test)]
mod tests;
