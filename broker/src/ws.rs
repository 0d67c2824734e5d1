//! MQTT over WebSocket, in front of the TCP listener.
//!
//! Each accepted socket is upgraded in its own task (with a deadline), then its binary
//! WebSocket messages are piped to a loopback TCP connection to the MQTT listener, so
//! WebSocket clients get exactly the same codec, rules and guard as TCP clients.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::debug;

/// Serves the WebSocket endpoint on `addr` at `path`, proxying to `target`.
pub(crate) async fn serve(
    addr: SocketAddr,
    path: &str,
    target: SocketAddr,
    handshake_timeout: Duration,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = crate::embedded::listen(addr)?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        path,
        get(
            move |axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<SocketAddr>,
                  ws: WebSocketUpgrade| async move { upgrade(ws, target, client) },
        ),
    );
    // A request that has not finished its upgrade in time is dropped; the timeout
    // layer bounds the HTTP part of the handshake.
    let app = app.layer(axum::middleware::from_fn_with_state(
        handshake_timeout,
        deadline,
    ));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::warn!(error = %e, "MQTT over WebSocket listener stopped");
        }
    });
    Ok((local, task))
}

/// Bounds the HTTP part of the WebSocket handshake.
async fn deadline(
    axum::extract::State(d): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(d, next.run(req)).await {
        Ok(r) => r,
        Err(_) => axum::http::StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

fn upgrade(
    ws: WebSocketUpgrade,
    target: SocketAddr,
    client: SocketAddr,
) -> axum::response::Response {
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| pipe(socket, target, client))
}

async fn pipe(socket: WebSocket, target: SocketAddr, client: SocketAddr) {
    let Ok(tcp) = TcpStream::connect(target).await else {
        debug!("MQTT listener unreachable from the WebSocket proxy");
        return;
    };
    let local = tcp.local_addr().ok();
    if let Some(l) = local {
        crate::peer::register_proxied(l, client);
    }
    let _ = tcp.set_nodelay(true);
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let up = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if tcp_tx.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // Either side ending ends both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    if let Some(l) = local {
        crate::peer::forget_proxied(l);
    }
}
