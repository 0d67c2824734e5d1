//! Starting rumqttd inside the mqim process, on the process's own tokio runtime.
//!
//! * The router runs on its own OS thread (rumqttd's design); the TCP listener task runs
//!   on our runtime with [`Guard`] as its codec.
//! * rumqttd binds its listener itself and cannot report the port, so for port 0 we pick
//!   a free port, start it, and check that the listener is ours (retrying on a race).
//! * MQTT over WebSocket is served by our own axum listener, which upgrades each
//!   connection in its own task and pipes it to the TCP listener: a WebSocket handshake
//!   that never completes then holds only its own task (rumqttd awaits handshakes inside
//!   its accept loop, bug 3).
//! * The service publishes through one local link driven by a dedicated thread, because
//!   local-link sends are blocking channel sends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish};
use rumqttd::{
    ConnectionSettings, LinkType, LogStats, Router, RouterConfig, SegmentConfig, Server,
    ServerSettings,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::guard::{Guard, Shared};
use crate::hooks::Hooks;
use crate::registry::{Connection, Registry};
use crate::ws;

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The MQTT listener could not be bound.
    #[error("cannot listen for MQTT on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The router refused the service's own link.
    #[error("broker router error: {0}")]
    Link(String),
}

/// Broker settings the service chooses (see `config/default.toml`, `[mqtt]`).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// MQTT over TCP.
    pub tcp_addr: SocketAddr,
    /// MQTT over WebSocket, if enabled.
    pub ws_addr: Option<SocketAddr>,
    /// HTTP path of the WebSocket endpoint.
    pub ws_path: String,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// How long a new socket may take to send CONNECT.
    pub connect_timeout: Duration,
    /// How long a WebSocket upgrade may take.
    pub handshake_timeout: Duration,
    /// Per-topic in-memory log of the router: size of one segment, in bytes.
    pub segment_size: usize,
    /// Per-topic in-memory log of the router: number of segments kept.
    pub segment_count: usize,
}

/// Most publishes handed to the router at once by the publishing thread.
const PUBLISH_BATCH: usize = 4096;

type Linker = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync>;

/// A message for the broker to route.
#[derive(Debug)]
struct Outgoing {
    topic: Bytes,
    payload: Bytes,
    retain: bool,
}

/// Publishes gathered to reach the broker together (see [`Publisher::send`]).
#[derive(Debug, Default)]
pub struct Batch(Vec<Outgoing>);

impl Batch {
    /// Adds a publish.
    pub fn publish(&mut self, topic: impl Into<Bytes>, payload: impl Into<Bytes>, retain: bool) {
        self.0.push(Outgoing {
            topic: topic.into(),
            payload: payload.into(),
            retain,
        });
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Publishes into the embedded broker. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Vec<Outgoing>>,
}

impl Publisher {
    /// Queues a publish. Subscribers receive it at their subscription's QoS.
    pub fn publish(&self, topic: impl Into<Bytes>, payload: impl Into<Bytes>, retain: bool) {
        let mut b = Batch::default();
        b.publish(topic, payload, retain);
        self.send(b);
    }

    /// Queues several publishes, in order. They reach the router as one hand-over (one
    /// wake of the publishing thread and of the router instead of one per publish).
    pub fn send(&self, batch: Batch) {
        if !batch.is_empty() {
            let _ = self.tx.send(batch.0);
        }
    }
}

/// The running embedded broker.
pub struct EmbeddedBroker {
    tcp_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    publisher: Publisher,
    linker: Linker,
    tasks: Vec<JoinHandle<()>>,
    log_stats: Arc<LogStats>,
}

impl EmbeddedBroker {
    /// Starts the router, the TCP listener, the WebSocket listener and the service's
    /// publishing link.
    ///
    /// # Errors
    /// When a listener cannot be bound or the router refuses the service link.
    pub async fn start(cfg: BrokerConfig, hooks: Arc<dyn Hooks>) -> Result<Self, BrokerError> {
        let router_cfg = RouterConfig {
            // The guard admits connections; the router must never refuse one itself
            // (that is one of the paths to rumqttd's listener lock-out). Room for local
            // links is added on top.
            max_connections: cfg.max_connections + 64,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.segment_size.max(1024),
            max_segment_count: cfg.segment_count.max(1),
            // Nothing published on the sink topic is ever read (the service link's
            // subscription only keeps those publishes on the router's cached path, see
            // `start_publisher`), so its log is the smallest rumqttd allows: two 1 KiB
            // segments, a few entries, instead of `segment_bytes × segment_count`.
            custom_segment: Some(
                [(
                    crate::guard::SINK_TOPIC.to_owned(),
                    SegmentConfig {
                        max_segment_size: 1024,
                        max_segment_count: 2,
                    },
                )]
                .into_iter()
                .collect(),
            ),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router = Router::new(0, router_cfg);
        let log_stats = router.log_stats();
        let router_tx = router.spawn();
        let linker: Linker = {
            let router_tx = router_tx.clone();
            Arc::new(move |id: &str| {
                LinkBuilder::new(id, router_tx.clone())
                    .build()
                    .map(|(tx, rx, _)| (tx, rx))
                    .map_err(|e| e.to_string())
            })
        };

        let registry = Arc::new(Registry::default());
        let shared = Arc::new(Shared {
            hooks,
            registry: registry.clone(),
            closer: std::sync::OnceLock::new(),
        });
        let _ = shared.closer.set(Closer {
            linker: linker.clone(),
            registry: registry.clone(),
        });

        let mut connections = ConnectionSettings {
            connection_timeout_ms: cfg.connect_timeout.as_millis().min(u16::MAX as u128) as u16,
            max_payload_size: cfg.max_packet_size,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        {
            let shared = shared.clone();
            let timeout = cfg.connect_timeout;
            connections.set_auth_handler(move |client_id, username, password| {
                let shared = shared.clone();
                async move {
                    tokio::time::timeout(
                        timeout,
                        authenticate(shared, client_id, username, password),
                    )
                    .await
                    .unwrap_or(false)
                }
            });
        }

        let mut tasks = Vec::new();
        let guard = Guard::new(shared);
        let make_server =
            move |settings: ServerSettings| Server::new(settings, router_tx.clone(), guard.clone());
        let (tcp_addr, task) = start_tcp(cfg.tcp_addr, connections, make_server).await?;
        tasks.push(task);

        let ws_addr = match cfg.ws_addr {
            Some(addr) => {
                let target = loopback_of(tcp_addr);
                let (addr, task) =
                    ws::serve(addr, &cfg.ws_path, target, cfg.handshake_timeout).await?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };

        let publisher = start_publisher(&linker)?;
        Ok(EmbeddedBroker {
            tcp_addr,
            ws_addr,
            registry,
            publisher,
            linker,
            tasks,
            log_stats,
        })
    }

    /// What the router's per-topic logs hold (bytes, topics with a log, saved
    /// sessions), updated by the router as it runs.
    pub fn log_stats(&self) -> Arc<LogStats> {
        self.log_stats.clone()
    }

    /// The bound MQTT/TCP address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The bound MQTT/WebSocket address, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// A handle to publish into the broker.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The live connections.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// A handle that can close connections, usable from anywhere.
    pub fn closer(&self) -> Closer {
        Closer {
            linker: self.linker.clone(),
            registry: self.registry.clone(),
        }
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Closes live connections.
#[derive(Clone)]
pub struct Closer {
    linker: Linker,
    registry: Arc<Registry>,
}

impl Closer {
    /// Closes every authenticated connection matching `pred`; returns how many.
    ///
    /// The router is told that a new session took over the connection's (unique,
    /// internal) client id, which makes it drop the old connection and close its socket;
    /// the taking-over link then disconnects itself.
    pub fn close_where(&self, pred: impl FnMut(&Connection) -> bool) -> usize {
        self.close(self.registry.select(pred))
    }

    /// Closes the given connections (see [`Closer::close_where`]); returns how many.
    pub fn close(&self, victims: Vec<Arc<Connection>>) -> usize {
        let n = victims.len();
        for conn in victims {
            if conn.mark_closing() {
                continue;
            }
            let linker = self.linker.clone();
            // Building a link is a blocking round trip to the router thread.
            tokio::task::spawn_blocking(move || match linker(&conn.internal_id) {
                Ok((mut tx, _rx)) => {
                    let bye = Packet::Disconnect(
                        Disconnect {
                            reason_code: DisconnectReasonCode::NormalDisconnection,
                        },
                        None,
                    );
                    if let Err(e) = futures::executor::block_on(tx.send(bye)) {
                        warn!(error = %e, "closing link could not disconnect");
                    }
                    debug!(conn = conn.id, "connection closed by the server");
                }
                Err(e) => warn!(error = %e, "cannot close connection"),
            });
        }
        n
    }
}

async fn authenticate(
    shared: Arc<Shared>,
    internal_id: String,
    username: String,
    password: String,
) -> bool {
    let Some(conn) = shared.registry.by_internal_id(&internal_id) else {
        return false;
    };
    if conn.username != username {
        return false;
    }
    match shared.hooks.authenticate(&username, &password).await {
        Some(p) if p.username == username => shared.registry.bind(&conn, p),
        _ => false,
    }
}

async fn start_tcp(
    addr: SocketAddr,
    connections: ConnectionSettings,
    make_server: impl Fn(ServerSettings) -> Server<Guard>,
) -> Result<(SocketAddr, JoinHandle<()>), BrokerError> {
    let tries = if addr.port() == 0 { 20 } else { 1 };
    let mut last = String::new();
    for _ in 0..tries {
        let addr = if addr.port() == 0 {
            let probe = std::net::TcpListener::bind(addr)?;
            probe.local_addr()?
        } else {
            addr
        };
        let settings = ServerSettings {
            name: format!("mqtt-{addr}"),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let mut server = make_server(settings);
        let task = tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                warn!(error = %e, "MQTT listener stopped");
            }
        });
        // rumqttd binds inside `start`; it is ours once it accepts while the task runs.
        let probe_addr = loopback_of(addr);
        for _ in 0..200 {
            if task.is_finished() {
                break;
            }
            if tokio::net::TcpStream::connect(probe_addr).await.is_ok() && !task.is_finished() {
                return Ok((addr, task));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        last = format!("listener on {addr} did not start (address in use?)");
    }
    Err(BrokerError::Bind { addr, reason: last })
}

fn start_publisher(linker: &Linker) -> Result<Publisher, BrokerError> {
    let (mut link_tx, link_rx) = linker("mqim-service").map_err(BrokerError::Link)?;
    // Published rumqttd caches topic→filter matches only for topics that have a
    // subscriber and scans every filter for the others. Every client publish is
    // rewritten to the sink topic, so the service link subscribes to it (and never reads
    // it: the router just appends to that topic's bounded log) to keep those publishes on
    // the cached path. The vendored topic-index patch (vendor/README.md) makes the scan
    // a hash lookup anyway; the subscription stays for an upgrade without that patch.
    link_tx
        .subscribe(crate::guard::SINK_TOPIC)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Outgoing>>();
    std::thread::Builder::new()
        .name("mqim-publisher".into())
        .spawn(move || {
            // Keeps the link registered with the router for as long as we publish.
            let _link_rx = link_rx;
            let packet =
                |o: Outgoing| Packet::Publish(Publish::new(o.topic, o.payload, o.retain), None);
            while let Some(first) = rx.blocking_recv() {
                // Everything queued meanwhile goes to the router with one wake.
                let mut packets: Vec<Packet> = first.into_iter().map(packet).collect();
                while packets.len() < PUBLISH_BATCH {
                    match rx.try_recv() {
                        Ok(more) => packets.extend(more.into_iter().map(packet)),
                        Err(_) => break,
                    }
                }
                if let Err(e) = link_tx.send_all(packets) {
                    warn!(error = %e, "broker link closed; publisher stops");
                    break;
                }
            }
        })?;
    Ok(Publisher { tx })
}

/// A TCP listener on `addr` with a backlog of 4,096 (capped by `net.core.somaxconn`).
/// `tokio::net::TcpListener::bind` uses 128: under a connect storm the accept queue
/// overflows and the dropped SYNs are retried only after a second.
///
/// # Errors
/// When the address cannot be bound.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The address to reach a listener bound to `addr` from this host.
pub(crate) fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}
