//! Wiring: open the database, migrate, start the broker and the HTTP server, and run
//! until the shutdown future resolves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mqim_broker::{BrokerConfig, EmbeddedBroker};
use tokio::sync::mpsc;
use tracing::info;

use crate::config::{redact_url, Config};
use crate::db::Db;
use crate::graph::SocialGraph;
use crate::metrics::Metrics;
use crate::mqtt::{dispatch, ServiceHooks};
use crate::passwords::Hasher;
use crate::push::{InboxFormats, Push};
use crate::state::AppState;

/// Runs the server until `shutdown` resolves, then drains HTTP requests (bounded).
///
/// # Errors
/// Start-up failures: database, migrations, a listener that cannot be bound.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    info!(database = %redact_url(&config.database_url()), backend = ?db.backend, "database ready");

    let graph = Arc::new(
        SocialGraph::load(&db)
            .await
            .context("loading social graph")?,
    );
    let metrics = Arc::new(Metrics::default());
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let inbox_formats = InboxFormats::default();
    let hooks = Arc::new(ServiceHooks::new(
        db.clone(),
        graph.clone(),
        metrics.clone(),
        inbound_tx,
        inbox_formats.clone(),
    ));

    let connect_timeout = Duration::from_secs(config.mqtt.connect_timeout_secs);
    let broker = EmbeddedBroker::start(
        BrokerConfig {
            tcp_addr: config.mqtt.addr,
            ws_addr: config.ws_addr(),
            ws_path: config.mqtt.ws_path.clone(),
            max_connections: config.mqtt.max_connections,
            max_packet_size: config.mqtt.max_packet_bytes,
            connect_timeout,
            handshake_timeout: connect_timeout,
            segment_size: config.mqtt.segment_bytes,
            segment_count: config.mqtt.segment_count,
        },
        hooks.clone(),
    )
    .await?;
    info!("mqtt listening on {}", broker.tcp_addr());
    if let Some(ws) = broker.ws_addr() {
        info!("mqtt-ws listening on {}{}", ws, config.mqtt.ws_path);
    }

    let push = Push::new(broker.publisher(), inbox_formats);
    let files = Arc::new(
        crate::files::FileStore::open(&config.data_dir, config.files.clone())
            .context("opening the file store under data_dir")?,
    );
    let service_rt = ServiceRuntime::start().context("starting the service thread")?;
    // The writer, its publisher and the cursor writer are spawned on the service thread.
    let messaging = {
        let _on_service_thread = service_rt.handle.enter();
        crate::messaging::Messaging::start(
            db.clone(),
            graph.clone(),
            push.clone(),
            broker.registry().clone(),
            files.clone(),
            config.messages.clone(),
        )
    };
    hooks.set_delivery(messaging.delivery.clone());
    let presence = crate::presence::Presence::start(
        db.clone(),
        push.clone(),
        broker.registry().clone(),
        metrics.presence_updates.clone(),
        metrics.online_users.clone(),
    )
    .await
    .context("rebuilding presence")?;
    let state = AppState {
        config: config.clone(),
        db: db.clone(),
        hasher: Hasher::new(config.auth.hash_concurrency),
        metrics,
        graph,
        push,
        messaging,
        files,
        presence,
        closer: broker.closer(),
        connections: broker.registry().clone(),
        broker_log: broker.log_stats(),
        started: Instant::now(),
    };
    let dispatcher = service_rt
        .handle
        .spawn(dispatch::run(state.clone(), inbound_rx));

    let listener = mqim_broker::embedded::listen(config.http.addr)
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    info!("http listening on {}", listener.local_addr()?);
    let app = crate::http::app(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .await
    });

    shutdown.await;
    info!("shutting down");
    broker.shutdown();
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after 10 s; stopping anyway");
    }
    dispatcher.abort();
    // Positions acknowledged in the last second, so a clean restart re-sends nothing.
    state.messaging.delivery.flush().await;
    drop(service_rt);
    db.close().await;
    info!("stopped");
    Ok(())
}

/// The message pipeline's own single-threaded tokio runtime, on an OS thread of its own
/// (`mqim-service`): the frame dispatcher, the group-commit writer, the task that hands
/// committed batches to the broker, the cursor writer and the offline-backlog tasks.
///
/// Why not the main runtime: a sent message hops through those tasks, and on the main
/// runtime each hop waited its turn behind every connection task that was runnable.
/// During a fan-out to 10,000 online devices that is 10,000 tasks, so a burst of 50
/// group messages reached the broker over up to 2.3 s instead of a few ms (measured with
/// `mqim-bench`: "time to the first delivery of its last message"), and every other
/// conversation's messages queued behind the fan-out too. On its own thread the
/// pipeline gets the kernel's fair share of a core at once, whatever the number of
/// connections. It only runs async code that does not block (database work goes to
/// the SQLite writer thread or the sqlx pool).
struct ServiceRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServiceRuntime {
    fn start() -> std::io::Result<ServiceRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("mqim-service".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still queued are dropped with the runtime, on this thread.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(ServiceRuntime {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for ServiceRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// a signal that arrives between "listening" being logged and the server awaiting this
/// future (tests send one at once) would otherwise get the default action, death
/// without a graceful stop.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = recv(term.as_mut()) => {}
                _ = recv(int.as_mut()) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for `s`, or forever when the handler could not be installed.
#[cfg(unix)]
async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
