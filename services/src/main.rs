//! The `mqim` binary: parse the command line, load configuration, set up logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqim::config::Config;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// jemalloc instead of glibc's allocator: frames are allocated on the service thread and
/// freed on others (the connection tasks, the router when its logs give entries back),
/// which glibc's arenas handle badly (workspace `Cargo.toml`, BENCHMARKS.md fix 28).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own figures for `/metrics` (`mqim_heap_*`): live bytes against what the
/// allocator keeps resident. `epoch` refreshes jemalloc's cached statistics first.
fn heap_stats() -> Option<mqim::metrics::HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let b = |v: usize| v as u64;
    Some(mqim::metrics::HeapStats {
        allocated: b(stats::allocated::read().ok()?),
        active: b(stats::active::read().ok()?),
        resident: b(stats::resident::read().ok()?),
        retained: b(stats::retained::read().ok()?),
        background_purge: tikv_jemalloc_ctl::background_thread::read().unwrap_or(false),
    })
}

/// Starts jemalloc's background thread, which gives pages freed after a burst back to
/// the kernel while the process is quiet. Without it jemalloc purges them only during
/// later allocations, so an idle server kept the RSS of its busiest moment: 342 MiB 15 s
/// after the 10,000-member broadcast, 265 MiB with it (BENCHMARKS.md, memory after
/// traffic). An operator who sets `_RJEM_MALLOC_CONF` configures the allocator
/// themselves, so it is then left alone.
fn start_background_purge() {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            eprintln!("mqim: allocator background purging not started: {e}");
        }
    }
}

/// mqim — instant messaging over MQTT.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file overlaid on the built-in defaults (config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: broker, REST API and delivery.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    start_background_purge();
    mqim::metrics::set_heap_reader(heap_stats);
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mqim: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqim: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => mqim::app::serve(config, mqim::app::shutdown_signal()).await,
            Command::Migrate => {
                let db = mqim::db::Db::connect(&config).await?;
                db.migrate().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mqim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colors only for a terminal: logs piped to files or tests stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi);
    // The accept layer learns client addresses from rumqttd's accept events, whatever
    // the log filter says (see mqim_broker::peer).
    let registry = tracing_subscriber::registry().with(mqim_broker::peer::AcceptLayer::filtered());
    if config.log.format == "json" {
        registry.with(fmt.json().with_filter(filter)).init();
    } else {
        registry.with(fmt.with_filter(filter)).init();
    }
}
