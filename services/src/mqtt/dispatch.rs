//! Decodes and answers client frames.
//!
//! Every frame is decoded and validated; a bad one gets an `error` frame with code
//! `bad_frame` on the sender's inbox and nothing else happens: the connection stays
//! open and no other client is affected.

use mqim_broker::Fmt;
use mqim_proto::{decode_client, peek_client_msg_id, ClientFrame, Format, ServerFrame};
use tokio::sync::mpsc;

use super::Inbound;
use crate::metrics::Metrics;
use crate::state::AppState;

fn format_of(f: Fmt) -> Format {
    match f {
        Fmt::Json => Format::Json,
        Fmt::Pb => Format::Pb,
    }
}

/// Runs until the inbound channel closes.
pub async fn run(state: AppState, mut rx: mpsc::UnboundedReceiver<Inbound>) {
    while let Some(inb) = rx.recv().await {
        handle(&state, inb).await;
    }
}

async fn handle(state: &AppState, inb: Inbound) {
    let Some(uid) = inb.conn.user_id() else {
        return;
    };
    let fmt = format_of(inb.fmt);
    let frame = match decode_client(fmt, &inb.payload).and_then(|f| f.validate().map(|()| f)) {
        Ok(f) => f,
        Err(e) => {
            Metrics::inc(&state.metrics.frames_in, "bad_frame");
            let id = peek_client_msg_id(fmt, &inb.payload);
            state.push.to_user(uid, &e.to_server_frame(id));
            return;
        }
    };
    Metrics::inc(&state.metrics.frames_in, frame.kind());
    match frame {
        ClientFrame::Ping {} => state.push.to_user(uid, &ServerFrame::Pong {}),
        other => {
            let id = other.client_msg_id().map(str::to_owned);
            state.push.to_user(
                uid,
                &ServerFrame::error(
                    id,
                    "unsupported",
                    format!(
                        "{} frames are not handled by this server version",
                        other.kind()
                    ),
                ),
            );
        }
    }
}
