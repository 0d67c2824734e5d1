//! A rumqttc client wrapper for tests: connect and wait for CONNACK (or refusal),
//! subscribe and wait for SUBACK codes, receive publishes with deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mqim_proto::{decode_server, encode_client, ClientFrame, Format, ServerFrame};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

use crate::WAIT;

/// Why a connection failed or ended.
#[derive(Debug, Clone)]
pub enum MqttError {
    /// The connection was refused or closed before CONNACK.
    Refused(String),
    /// No answer in time.
    Timeout,
}

/// A received publish.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Retain flag.
    pub retain: bool,
    /// The packet, for [`MqttClient::ack`].
    publish: rumqttc::Publish,
}

impl Received {
    /// The payload as a server frame in the topic's format.
    pub fn frame(&self) -> ServerFrame {
        let fmt = if self.topic.ends_with("/pb") {
            Format::Pb
        } else {
            Format::Json
        };
        decode_server(fmt, &self.payload)
            .unwrap_or_else(|e| panic!("undecodable frame on {}: {e}", self.topic))
    }

    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A connected test client.
pub struct MqttClient {
    /// The rumqttc handle.
    pub client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<Received>,
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    closed: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttClient {
    /// Connects over TCP and waits for CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<MqttClient, MqttError> {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_credentials(username, password);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        Self::connect_with(opts).await
    }

    /// Connects with the given options and waits for CONNACK.
    pub async fn connect_with(opts: MqttOptions) -> Result<MqttClient, MqttError> {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (stx, subacks) = mpsc::unbounded_channel();
        let (ctx, closed) = mpsc::unbounded_channel();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Result<(), String>>();
        let task = tokio::spawn(async move {
            let mut connected = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        let _ = conn_tx.send(Ok(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.clone(),
                            retain: p.retain,
                            publish: p,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = stx.send(s.return_codes.clone());
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) => {
                        let _ = ctx.send("server sent DISCONNECT".into());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let msg = describe(&e);
                        if connected {
                            let _ = ctx.send(msg);
                        } else {
                            let _ = conn_tx.send(Err(msg));
                        }
                        break;
                    }
                }
            }
        });
        match tokio::time::timeout(WAIT, conn_rx.recv()).await {
            Ok(Some(Ok(()))) => Ok(MqttClient {
                client,
                publishes,
                subacks,
                closed,
                task,
            }),
            Ok(Some(Err(e))) => Err(MqttError::Refused(e)),
            Ok(None) => Err(MqttError::Refused("event loop ended".into())),
            Err(_) => {
                task.abort();
                Err(MqttError::Timeout)
            }
        }
    }

    /// Subscribes (QoS 1) to `filters` in one packet and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<SubscribeReasonCode> {
        self.subscribe_qos(filters, QoS::AtLeastOnce).await
    }

    /// Subscribes at `qos` and returns the SUBACK codes.
    pub async fn subscribe_qos(&mut self, filters: &[&str], qos: QoS) -> Vec<SubscribeReasonCode> {
        let subs: Vec<_> = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), qos))
            .collect();
        self.client.subscribe_many(subs).await.unwrap();
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("SUBACK in time")
            .expect("connection alive")
    }

    /// Whether each filter was granted (not 0x80).
    pub async fn subscribe_ok(&mut self, filters: &[&str]) -> Vec<bool> {
        self.subscribe(filters)
            .await
            .into_iter()
            .map(|c| !matches!(c, SubscribeReasonCode::Failure))
            .collect()
    }

    /// Acknowledges `r` (a client made with manual acks; others acknowledge every
    /// publish as it arrives).
    pub async fn ack(&self, r: &Received) {
        self.client.ack(&r.publish).await.unwrap();
    }

    /// Publishes raw bytes (QoS 1).
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes a client frame on the user's outbox in `fmt`.
    pub async fn send_frame(&self, uid: i64, fmt: Format, frame: &ClientFrame) {
        let topic = format!("im/u/{uid}/out/{}", fmt.as_str());
        self.publish(&topic, encode_client(fmt, frame)).await;
    }

    /// The next publish, within `WAIT`.
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT).await.expect("a publish in time")
    }

    /// The next publish within `d`, or `None`.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Received> {
        tokio::time::timeout(d, self.publishes.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next publish whose frame satisfies `pred` (skipping others), within `WAIT`.
    pub async fn recv_frame_where(
        &mut self,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> (Received, ServerFrame) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = tokio::time::timeout_at(deadline, self.publishes.recv())
                .await
                .expect("expected frame in time")
                .expect("connection alive");
            // Presence payloads are not frames.
            if r.topic.starts_with("im/p/") {
                continue;
            }
            let f = r.frame();
            if pred(&f) {
                return (r, f);
            }
        }
    }

    /// Asserts that nothing arrives within `d`.
    pub async fn expect_nothing(&mut self, d: Duration) {
        if let Some(r) = self.recv_within(d).await {
            panic!(
                "expected nothing, got {} on {}",
                String::from_utf8_lossy(&r.payload),
                r.topic
            );
        }
    }

    /// Waits until the server closes the connection; returns the reason.
    pub async fn closed_within(&mut self, d: Duration) -> Option<String> {
        tokio::time::timeout(d, self.closed.recv())
            .await
            .ok()
            .flatten()
    }

    /// Disconnects cleanly.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        // The event loop ends once the DISCONNECT is on the wire.
        let _ = self.closed_within(Duration::from_secs(2)).await;
    }
}

fn describe(e: &ConnectionError) -> String {
    format!("{e:?}")
}
