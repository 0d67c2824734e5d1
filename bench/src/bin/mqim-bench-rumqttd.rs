//! Standalone rumqttd for the benchmark baseline: the embedded broker's ceiling.
//!
//! It starts rumqttd 0.20 the way `broker/src/embedded.rs` does — the same
//! `RouterConfig` and `ConnectionSettings` values (mqim's defaults from
//! `config/default.toml`, but twice the log segments: see `SEGMENT_COUNT`), the same
//! allocator (jemalloc), the router on its own thread, the TCP listener on a
//! multi-thread tokio runtime, no accept delay — but with rumqttd's plain MQTT 3.1.1
//! codec instead of mqim's guard, no authentication and no service. Running it as its
//! own process lets the harness account its CPU and memory separately from the load.
//!
//! Usage: `mqim-bench-rumqttd [PORT [SEGMENT_BYTES SEGMENT_COUNT]]` (port 0 or absent:
//! a free port; the log segments default to mqim's). Prints `rumqttd listening on ADDR`
//! once the listener accepts, then serves until killed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};

/// The allocator mqim's binary uses (services/src/main.rs), so that this stays the
/// embedded broker's ceiling.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// mqim's `[mqtt]` defaults (config/default.toml), as embedded.rs uses them.
const MAX_CONNECTIONS: usize = 18_000;
const MAX_PACKET_BYTES: usize = 262_144;
const CONNECT_TIMEOUT_MS: u16 = 5_000;
const SEGMENT_BYTES: usize = 65_536;
/// Twice mqim's `segment_count`: a plain broker queues a persistent session's missed
/// messages in the topic's log, and the offline-drain benchmark's 10,000 for one
/// device (~4.5 MB as entries are counted) must fit; mqim keeps them in its database
/// and its log only ever holds a backlog window.
const SEGMENT_COUNT: usize = 128;

fn main() {
    // The allocator set up as mqim's binary sets it up (services/src/main.rs), so that
    // the memory a quiet server keeps compares like for like.
    if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
        let _ = tikv_jemalloc_ctl::background_thread::write(true);
    }
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().unwrap_or_else(|_| panic!("bad port {p:?}")),
        None => 0,
    };
    let arg = |i: usize, default: usize| match std::env::args().nth(i) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("bad argument {v:?}")),
        None => default,
    };
    let (segment_bytes, segment_count) = (arg(2, SEGMENT_BYTES), arg(3, SEGMENT_COUNT));
    let addr: SocketAddr = if port == 0 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe port on 127.0.0.1");
        probe.local_addr().expect("probe address")
    } else {
        SocketAddr::from(([127, 0, 0, 1], port))
    };

    let router_cfg = RouterConfig {
        max_connections: MAX_CONNECTIONS + 64,
        max_outgoing_packet_count: 200,
        max_segment_size: segment_bytes,
        max_segment_count: segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let settings = ServerSettings {
        name: format!("mqtt-{addr}"),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let router_tx = Router::new(0, router_cfg).spawn();
        let mut server = Server::new(settings, router_tx, V4);
        let task = tokio::spawn(async move { server.start(LinkType::Remote).await });
        for _ in 0..400 {
            if task.is_finished() {
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                println!("rumqttd listening on {addr}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("rumqttd listener on {addr} stopped: {e}"),
            Err(e) => panic!("rumqttd listener task failed: {e}"),
        }
    });
}
