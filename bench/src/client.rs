//! The load client: one rumqttc connection per simulated device, its event loop in its
//! own task. Received publishes go straight to a handler called in that task (no
//! channel hop), so the cost per message on the load side is the same for every
//! system under test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Called with (topic, payload) of every received publish.
pub type Handler = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// A handler that ignores everything.
pub fn ignore() -> Handler {
    Arc::new(|_, _| {})
}

/// Connections that ended unexpectedly after CONNACK (any scenario).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How to connect.
#[derive(Clone)]
pub struct Opts {
    /// Broker address.
    pub addr: SocketAddr,
    /// Client id.
    pub id: String,
    /// Username and password (token), if any.
    pub creds: Option<(String, String)>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Clean session.
    pub clean: bool,
    /// Request channel capacity (publishes queued in the client).
    pub cap: usize,
    /// Counts PUBACKs received for this client's publishes.
    pub pubacks: Option<Arc<AtomicU64>>,
}

impl Opts {
    /// Defaults: clean session, 30 s keep-alive, 64 queued requests.
    pub fn new(addr: SocketAddr, id: impl Into<String>, creds: Option<(String, String)>) -> Opts {
        Opts {
            addr,
            id: id.into(),
            creds,
            keep_alive: Duration::from_secs(30),
            clean: true,
            cap: 64,
            pubacks: None,
        }
    }
}

/// A connected client.
pub struct Conn {
    /// The rumqttc handle.
    pub client: AsyncClient,
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Connects and waits for CONNACK (at most `within`).
    pub async fn connect(o: Opts, on_publish: Handler, within: Duration) -> Result<Conn> {
        let mut mo = MqttOptions::new(o.id.clone(), o.addr.ip().to_string(), o.addr.port());
        if let Some((u, p)) = &o.creds {
            mo.set_credentials(u.clone(), p.clone());
        }
        mo.set_keep_alive(o.keep_alive);
        mo.set_clean_session(o.clean);
        mo.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(mo, o.cap);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(within.as_secs().max(1));
        eventloop.set_network_options(net);
        let (stx, subacks) = mpsc::unbounded_channel();
        let (ctx, crx) = oneshot::channel::<Result<(), String>>();
        let pubacks = o.pubacks.clone();
        let task = tokio::spawn(async move {
            let mut ctx = Some(ctx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.topic, &p.payload),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(c) = ctx.take() {
                            let _ = c.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if let Some(c) = &pubacks {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = stx.send(s.return_codes);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        match ctx.take() {
                            Some(c) => {
                                let _ = c.send(Err(format!("{e}")));
                            }
                            None => {
                                DROPPED.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        break;
                    }
                }
            }
        });
        match tokio::time::timeout(within, crx).await {
            Ok(Ok(Ok(()))) => Ok(Conn {
                client,
                subacks,
                task,
            }),
            Ok(Ok(Err(e))) => {
                task.abort();
                Err(anyhow!("connect {} refused: {e}", o.id))
            }
            Ok(Err(_)) => Err(anyhow!("connect {}: event loop ended", o.id)),
            Err(_) => {
                task.abort();
                Err(anyhow!("connect {}: no CONNACK within {within:?}", o.id))
            }
        }
    }

    /// Subscribes at QoS 1 and waits for a SUBACK granting every filter.
    pub async fn subscribe(&mut self, filters: &[String], within: Duration) -> Result<()> {
        let subs: Vec<_> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        self.client.subscribe_many(subs).await?;
        match tokio::time::timeout(within, self.subacks.recv()).await {
            Ok(Some(codes)) => {
                if codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    bail!("subscription to {filters:?} refused: {codes:?}");
                }
                Ok(())
            }
            Ok(None) => bail!("connection closed before SUBACK"),
            Err(_) => bail!("no SUBACK within {within:?}"),
        }
    }

    /// Sends DISCONNECT and waits (briefly) for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
    }
}
