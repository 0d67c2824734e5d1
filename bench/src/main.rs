//! `mqim-bench`: measures mqim against the raw brokers it is built on, in one run.
//!
//! Why one run: absolute numbers drift between runs on shared machines, so every
//! figure for mqim is measured next to the same figure for standalone rumqttd (the
//! ceiling of mqim's embedded broker, same settings) and Mosquitto (the well-known C
//! broker, persistence off), with the same load client, payload size and QoS, and
//! reported with the ratio (see BENCHMARKS.md for the method and the results).
//!
//! Every scenario has a hard time limit and counts lost and duplicated messages;
//! `--smoke` runs all of them with tiny sizes as a CI check that the harness works and
//! nothing is lost (not how fast anything is), and exits non-zero otherwise.

mod api;
mod client;
mod report;
mod scenarios;
mod target;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use report::{Metric, Report};
use scenarios::{Outcome, Population, Sizes};
use target::{Kind, Programs, Target};

/// Benchmarks mqim against standalone rumqttd and Mosquitto.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Tiny sizes: checks that every scenario runs and loses nothing (for CI).
    #[arg(long)]
    smoke: bool,
    /// The `mqim` binary [default: next to this program, else target/release, else
    /// target/debug].
    #[arg(long, value_name = "PATH")]
    mqim: Option<PathBuf>,
    /// The `mqim-bench-rumqttd` binary [default: next to this program].
    #[arg(long, value_name = "PATH")]
    rumqttd: Option<PathBuf>,
    /// The Mosquitto broker.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Runs mqim on PostgreSQL: the admin URL of a server on which to make a fresh
    /// database for each mqim process (dropped after it), e.g.
    /// `postgres://postgres:postgres@127.0.0.1:5432/postgres` [default: SQLite in a
    /// fresh data directory]. Also read from `BENCH_POSTGRES_URL`.
    #[arg(long, value_name = "ADMIN_URL", env = "BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// Systems to run, in this order.
    #[arg(long, value_delimiter = ',', default_values = ["mqim", "rumqttd", "mosquitto"])]
    targets: Vec<Sys>,
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_values = ["one-to-one", "fan-out", "storm", "drain"])]
    scenarios: Vec<Scenario>,
    /// 1:1 pairs (overrides the mode's size).
    #[arg(long)]
    pairs: Option<usize>,
    /// Open-loop rates in msg/s, comma-separated (overrides the mode's).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Connects in progress at once in the connect storm (overrides the mode's).
    #[arg(long)]
    storm_concurrency: Option<usize>,
    /// Connections of the storm/idle/broadcast scenario, as ACCOUNTSxDEVICES.
    #[arg(long, value_name = "AxD")]
    connections: Option<String>,
    /// Broadcast: single messages sent one at a time, then messages sent as one burst
    /// (overrides the mode's 10,50; at least 1 each), e.g. `30,1` to profile single
    /// messages, `1,200` a burst.
    #[arg(long, value_name = "ROUNDS,BURST", value_delimiter = ',')]
    broadcast: Option<Vec<usize>>,
    /// Soak (`--scenarios soak`, not run by default): seconds of steady 1:1 traffic
    /// while receivers reconnect (120 by default, 3 in smoke mode).
    #[arg(long, value_name = "SECS")]
    soak: Option<u64>,
    /// 1:1: after each rate, print (stderr) the 50 ms windows in which a message took
    /// over 10 ms — to tell periodic stalls from scattered ones.
    #[arg(long)]
    timeline: bool,
    /// 1:1: keep this many more devices online beside the pairs, idle, each
    /// subscribed to its inbox (mqim: devices of the storm accounts) — the router's
    /// cost per message should not grow with them.
    /// (Default 0; 20 in smoke mode, so that CI runs this path.)
    #[arg(long, value_name = "N")]
    idle_devices: Option<usize>,
    /// Runs everything this many times, systems interleaved (each round starts with
    /// the next system), and reports each figure's median with its range: on a
    /// machine whose speed drifts by ±15 %, one round each can mislead.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rounds: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Sys {
    Mqim,
    Rumqttd,
    Mosquitto,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Scenario {
    OneToOne,
    FanOut,
    Storm,
    Drain,
    Soak,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OneToOne => "1:1 end-to-end",
            Scenario::FanOut => "group fan-out",
            Scenario::Storm => "connect storm + idle + broadcast",
            Scenario::Drain => "offline drain",
            Scenario::Soak => "soak",
        }
    }
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem} RAM, kernel {}, load average {}",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

async fn run_scenario(
    sc: Scenario,
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<Metric>,
) -> anyhow::Result<Outcome> {
    match sc {
        Scenario::OneToOne => scenarios::one_to_one(t, pop, s, out).await,
        Scenario::FanOut => scenarios::fan_out(t, pop, s, out).await,
        Scenario::Storm => scenarios::storm_idle_broadcast(t, pop, s, out).await,
        Scenario::Drain => scenarios::offline_drain(t, pop, s, out).await,
        Scenario::Soak => scenarios::soak(t, pop, s, out).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut sizes = if cli.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if let Some(p) = cli.pairs {
        sizes.pairs = p.max(2);
    }
    if let Some(c) = cli.storm_concurrency {
        sizes.storm_concurrency = c.max(1);
    }
    // Accounts only the skipped scenarios need are not made (registration is slow).
    if !cli.scenarios.contains(&Scenario::OneToOne)
        && !cli.scenarios.contains(&Scenario::FanOut)
        && !cli.scenarios.contains(&Scenario::Soak)
    {
        sizes.pairs = 2;
        sizes.group = 2;
    }
    if !cli.scenarios.contains(&Scenario::Drain) {
        sizes.drain_many = 0;
    }
    if let Some(b) = &cli.broadcast {
        let [rounds, burst] = b[..] else {
            eprintln!("--broadcast wants ROUNDS,BURST, e.g. 10,50");
            return ExitCode::from(2);
        };
        sizes.bcast_rounds = rounds.max(1);
        sizes.bcast_burst = burst.max(1);
    }
    if let Some(secs) = cli.soak {
        sizes.soak = Duration::from_secs(secs.max(1));
        // A longer soak leaves its set-up and settling the usual time.
        sizes.limit = sizes.limit.max(sizes.soak + Duration::from_secs(180));
    }
    sizes.timeline = cli.timeline;
    if let Some(k) = cli.idle_devices {
        sizes.idle_devices = k;
    }
    if let Some(r) = cli.rates.clone() {
        sizes.rates = r;
    }
    if let Some(c) = &cli.connections {
        match c.split_once('x').map(|(a, d)| (a.parse(), d.parse())) {
            Some((Ok(a), Ok(d))) => {
                sizes.accounts = a;
                sizes.devices = d;
            }
            _ => {
                eprintln!("--connections wants ACCOUNTSxDEVICES, e.g. 100x100");
                return ExitCode::from(2);
            }
        }
    }
    if cli.rounds == 0 {
        eprintln!("--rounds wants at least 1");
        return ExitCode::from(2);
    }
    if let Some(url) = &cli.postgres {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            eprintln!("--postgres wants a postgres:// URL");
            return ExitCode::from(2);
        }
    }
    let progs = Programs::find(
        cli.mqim.clone(),
        cli.rumqttd.clone(),
        cli.mosquitto.clone(),
        cli.postgres.clone(),
    );
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    wire::now_us();

    println!("# mqim-bench {}", if cli.smoke { "(smoke)" } else { "" });
    println!("machine: {}", machine());
    println!("mqim: {}", progs.mqim.display());
    println!(
        "mqim's database: {}",
        match &progs.postgres {
            Some(url) => format!(
                "PostgreSQL, a fresh database on {}",
                mqim::config::redact_url(url)
            ),
            None => "SQLite, a fresh data directory".to_owned(),
        }
    );
    println!("sizes: {sizes:?}");

    let mut report = Report::default();
    let mut checks: Vec<Check> = Vec::new();
    let started = Instant::now();
    let rounds = cli.rounds;
    for round in 0..rounds {
        if rounds > 1 {
            println!("\n# round {} of {rounds}", round + 1);
        }
        // Each round starts with the next system, so that none is always the first
        // (or last) on a machine whose speed drifts during the run.
        let n = cli.targets.len();
        for i in 0..n {
            let sys = cli.targets[(i + round) % n];
            let label = if rounds > 1 {
                format!("round {}: ", round + 1)
            } else {
                String::new()
            };
            run_system(
                sys,
                &label,
                &cli,
                &progs,
                &sizes,
                in_ci,
                &mut report,
                &mut checks,
            )
            .await;
        }
    }

    println!("\n# Results ({})\n", machine());
    println!("{}", report.render());
    println!("\ntotal time {:.1?}\n", started.elapsed());
    let passed = checks.iter().filter(|c| c.ok).count();
    let failed = checks.len() - passed;
    for c in &checks {
        println!(
            "{} {} — {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || checks.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the chosen scenarios on one system: starts it, makes the accounts (mqim),
/// runs each scenario under the time limit, and records figures and checks
/// (`label` prefixes the checks' names, e.g. `round 2: `).
#[allow(clippy::too_many_arguments)]
async fn run_system(
    sys: Sys,
    label: &str,
    cli: &Cli,
    progs: &Programs,
    sizes: &Sizes,
    in_ci: bool,
    report: &mut Report,
    checks: &mut Vec<Check>,
) {
    let kind = match sys {
        Sys::Mqim => Kind::Mqim,
        Sys::Rumqttd => Kind::Rumqttd,
        Sys::Mosquitto => Kind::Mosquitto,
    };
    if kind == Kind::Mosquitto && !progs.mosquitto.is_file() {
        let msg = format!(
            "Mosquitto not found at {} (apt-get install mosquitto)",
            progs.mosquitto.display()
        );
        if in_ci {
            checks.push(Check {
                name: format!("{label}mosquitto: start"),
                ok: false,
                detail: msg,
            });
        } else {
            println!("\nSKIPPED mosquitto: {msg}");
        }
        return;
    }
    println!("\n## {}", kind.name());
    let mut t = match Target::start(kind, progs).await {
        Ok(t) => t,
        Err(e) => {
            checks.push(Check {
                name: format!("{label}{}: start", kind.name()),
                ok: false,
                detail: format!("{e:#}"),
            });
            return;
        }
    };
    println!("started pid {} on {}", t.pid, t.mqtt);
    let pop = match &t.http {
        Some(base) => {
            let t0 = Instant::now();
            let res = match api::Api::new(base) {
                Ok(api) => {
                    tokio::time::timeout(sizes.limit, scenarios::populate(&api, sizes)).await
                }
                Err(e) => Ok(Err(e)),
            };
            match res {
                Ok(Ok(p)) => {
                    println!(
                        "accounts, friendships and groups made in {:.1?}",
                        t0.elapsed()
                    );
                    Some(p)
                }
                failed => {
                    let detail = match failed {
                        Ok(Err(e)) => format!("{e:#}\n{}", t.log_tail(20)),
                        _ => "timed out".into(),
                    };
                    checks.push(Check {
                        name: format!("{label}{}: setup", kind.name()),
                        ok: false,
                        detail,
                    });
                    t.stop().await;
                    return;
                }
            }
        }
        None => None,
    };
    for (i, &sc) in cli.scenarios.iter().enumerate() {
        if sc == Scenario::Storm && i > 0 {
            // Memory per idle connection is RSS growth: measure it in a fresh
            // process, not in a heap that the scenarios before grew and freed.
            if let Err(e) = t.restart(progs).await {
                checks.push(Check {
                    name: format!("{label}{}: restart", kind.name()),
                    ok: false,
                    detail: format!("{e:#}"),
                });
                break;
            }
            println!("restarted as pid {} on {} (fresh heap)", t.pid, t.mqtt);
        }
        let t0 = Instant::now();
        let rss0 = t.rss_kib().unwrap_or(0);
        let dropped0 = client::DROPPED.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let r = tokio::time::timeout(
            sizes.limit,
            run_scenario(sc, &t, pop.as_ref(), sizes, &mut out),
        )
        .await;
        for m in out {
            report.put(kind, m);
        }
        let dropped = client::DROPPED.load(Ordering::Relaxed) - dropped0;
        let (ok, mut detail) = match r {
            Ok(Ok(o)) => {
                let mut d = format!("lost {}, duplicated {}", o.lost, o.dup);
                for p in &o.problems {
                    d.push_str("; ");
                    d.push_str(p);
                }
                (o.ok(), d)
            }
            Ok(Err(e)) => (false, format!("error: {e:#}")),
            Err(_) => (false, format!("timed out after {:?}", sizes.limit)),
        };
        let ok = ok && dropped == 0;
        if dropped > 0 {
            detail.push_str(&format!("; {dropped} connections dropped"));
        }
        if !t.alive() {
            detail.push_str(&format!("; the server died:\n{}", t.log_tail(30)));
        }
        let ok = ok && t.alive();
        println!(
            "{} {}: {} in {:.1?}, server RSS {} → {} MiB ({detail})",
            kind.name(),
            sc.name(),
            if ok { "ok" } else { "FAILED" },
            t0.elapsed(),
            rss0 / 1024,
            t.rss_kib().unwrap_or(0) / 1024,
        );
        checks.push(Check {
            name: format!("{label}{}: {}", kind.name(), sc.name()),
            ok,
            detail,
        });
        if !t.alive() {
            break;
        }
    }
    t.stop().await;
}
