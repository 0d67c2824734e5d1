//! The scenarios of issue 8, each runnable against mqim and against a plain broker.
//!
//! The same load client, payload size (200 B published) and QoS (1 on both legs) are
//! used for every system. mqim is driven as an IM client would drive it (send frames
//! on the outbox, messages from the inbox or group topic, acks after storage); a
//! plain broker gets the equivalent plain publish to a topic the receiver subscribed
//! to. Every message carries its send time; receivers count each message once in a
//! bitset per stream, so losses and duplicates are exact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use rumqttc::QoS;
use tokio::sync::Semaphore;

use crate::api::{Api, User};
use crate::client::{self, Conn, Handler, Opts};
use crate::report::{Goal, Sink};
use crate::target::{cpu_secs_of, kernel_tcp_bytes, Kind, Target};
use crate::wire::{fields, now_us, parse, payload, Rx, Seen, To};

const SIZE: usize = 200;
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// 1:1 pairs (flows).
    pub pairs: usize,
    /// Open-loop rates (messages/s over all pairs), stepped up while p99 < 50 ms.
    pub rates: Vec<u64>,
    /// Duration of each open-loop rate.
    pub phase: Duration,
    /// Duration of the throughput phase.
    pub tput: Duration,
    /// Messages per pair in flight (sent, not yet received) in the throughput phase.
    pub window: usize,
    /// Members of the fan-out group.
    pub group: usize,
    /// Fan-out: single messages timed one at a time, then a burst.
    pub group_rounds: usize,
    /// Fan-out burst size.
    pub group_burst: usize,
    /// Storm/idle/broadcast: accounts (mqim) ...
    pub accounts: usize,
    /// ... times devices per account = connections.
    pub devices: usize,
    /// Broadcast rounds.
    pub bcast_rounds: usize,
    /// Broadcast burst size.
    pub bcast_burst: usize,
    /// Connects in progress at once during the storm.
    pub storm_concurrency: usize,
    /// Wait before measuring the idle process.
    pub settle: Duration,
    /// Idle CPU measurement window.
    pub idle: Duration,
    /// After the broadcast: how long the members stay connected and quiet before the
    /// server's RSS is read again (what it gives back at rest; jemalloc returns freed
    /// pages after a 10 s decay).
    pub rest: Duration,
    /// Offline drain: messages waiting for one device.
    pub drain_one: usize,
    /// Offline drain: devices ...
    pub drain_many: usize,
    /// ... with this many messages each.
    pub drain_each: usize,
    /// Longest wait for outstanding messages after sending stops.
    pub settle_limit: Duration,
    /// Hard time limit of one scenario on one system.
    pub limit: Duration,
    /// 1:1: print the windows of each rate that had a slow message (`--timeline`).
    pub timeline: bool,
    /// 1:1: devices kept online and subscribed to their inbox, idle, beside the pairs
    /// (`--idle-devices`): what a server's router carries for the devices that are
    /// connected but not talking, which is most of them.
    pub idle_devices: usize,
    /// Soak: how long steady 1:1 traffic runs (`--soak`).
    pub soak: Duration,
    /// Soak: messages/s over all flows.
    pub soak_rate: u64,
    /// Soak: every this often a tenth of the receivers disconnect ...
    pub soak_churn: Duration,
    /// ... and connect again after this long.
    pub soak_gap: Duration,
}

impl Sizes {
    /// The sizes of issue 8.
    pub fn full() -> Sizes {
        Sizes {
            pairs: 1000,
            rates: vec![1_000, 5_000, 10_000, 20_000, 40_000],
            phase: Duration::from_secs(5),
            tput: Duration::from_secs(10),
            window: 10,
            group: 500,
            group_rounds: 20,
            group_burst: 200,
            accounts: 100,
            devices: 100,
            bcast_rounds: 10,
            bcast_burst: 50,
            storm_concurrency: 500,
            settle: Duration::from_secs(3),
            idle: Duration::from_secs(10),
            rest: Duration::from_secs(15),
            drain_one: 10_000,
            drain_many: 100,
            drain_each: 1_000,
            settle_limit: Duration::from_secs(30),
            limit: Duration::from_secs(300),
            timeline: false,
            idle_devices: 0,
            soak: Duration::from_secs(120),
            soak_rate: 2_000,
            soak_churn: Duration::from_secs(5),
            soak_gap: Duration::from_secs(1),
        }
    }

    /// Tiny sizes for CI: does every scenario run and lose nothing.
    pub fn smoke() -> Sizes {
        Sizes {
            pairs: 10,
            rates: vec![200],
            phase: Duration::from_secs(1),
            tput: Duration::from_secs(1),
            window: 5,
            group: 20,
            group_rounds: 3,
            group_burst: 5,
            accounts: 10,
            devices: 20,
            bcast_rounds: 2,
            bcast_burst: 5,
            storm_concurrency: 100,
            settle: Duration::from_millis(300),
            idle: Duration::from_secs(1),
            rest: Duration::from_secs(1),
            drain_one: 200,
            drain_many: 5,
            drain_each: 40,
            settle_limit: Duration::from_secs(10),
            limit: Duration::from_secs(40),
            timeline: false,
            idle_devices: 20,
            soak: Duration::from_secs(3),
            soak_rate: 200,
            soak_churn: Duration::from_millis(500),
            soak_gap: Duration::from_millis(200),
        }
    }
}

/// What a scenario found besides its figures.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages sent (accepted by the load client) and never received.
    pub lost: u64,
    /// Messages received more than once.
    pub dup: u64,
    /// Anything else wrong (refused connections, errors, disorder, overload).
    pub problems: Vec<String>,
}

impl Outcome {
    /// Whether the scenario passed (nothing lost, duplicated or wrong).
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.problems.is_empty()
    }
}

/// Accounts, friendships and groups on mqim, made before the scenarios (not timed).
pub struct Population {
    ring: Vec<User>,
    accounts: Vec<User>,
    drain_sender: User,
    drain: Vec<User>,
    group: i64,
    bcast_group: i64,
}

/// Creates the population for `s`.
pub async fn populate(api: &Api, s: &Sizes) -> Result<Population> {
    let ring_n = s.pairs.max(s.group).max(2);
    let mut names: Vec<String> = (0..ring_n).map(|i| format!("ring_{i}")).collect();
    names.extend((0..s.accounts.max(1)).map(|i| format!("acct_{i}")));
    names.push("drain_sender".into());
    names.extend((0..=s.drain_many).map(|i| format!("drain_{i}")));
    let mut users = api.register_all(names).await?.into_iter();
    let ring: Vec<User> = users.by_ref().take(ring_n).collect();
    let accounts: Vec<User> = users.by_ref().take(s.accounts.max(1)).collect();
    let drain_sender = users.next().context("drain sender")?;
    let drain: Vec<User> = users.collect();

    // 1:1 flows form a ring over the first `pairs` accounts: i sends to i+1.
    let n = s.pairs.max(2);
    let mut pairs: Vec<(User, User)> = (0..n)
        .map(|i| (ring[i].clone(), ring[(i + 1) % n].clone()))
        .collect();
    if n == 2 {
        pairs.truncate(1);
    }
    pairs.extend(drain.iter().map(|d| (drain_sender.clone(), d.clone())));
    api.befriend_all(pairs).await?;
    let group = api.group(&ring[0], &ring[..s.group]).await?;
    let bcast_group = api.group(&accounts[0], &accounts).await?;
    Ok(Population {
        ring,
        accounts,
        drain_sender,
        drain,
        group,
        bcast_group,
    })
}

async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects many clients, `conc` at a time; returns them in order (None = failed)
/// and the first error.
async fn connect_many(
    opts: Vec<(Opts, Handler)>,
    conc: usize,
) -> (Vec<Option<Conn>>, usize, Option<String>) {
    let results: Vec<Result<Conn>> = stream::iter(opts)
        .map(|(o, h)| Conn::connect(o, h, CONNECT_WAIT))
        .buffered(conc)
        .collect()
        .await;
    let mut first = None;
    let mut failed = 0;
    let conns = results
        .into_iter()
        .map(|r| match r {
            Ok(c) => Some(c),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("{e:#}"));
                None
            }
        })
        .collect();
    (conns, failed, first)
}

/// Connects all of `opts` (`conc` at a time); any failure fails the scenario, named
/// `what` (e.g. "connections failed") with the count and the first error.
async fn connect_all(opts: Vec<(Opts, Handler)>, conc: usize, what: &str) -> Result<Vec<Conn>> {
    let n = opts.len();
    let (conns, failed, first) = connect_many(opts, conc).await;
    if failed > 0 {
        bail!("{failed} of {n} {what}: {}", first.unwrap_or_default());
    }
    Ok(conns.into_iter().flatten().collect())
}

async fn subscribe_many(conns: &mut [Conn], filter: &str, conc: usize) -> Result<()> {
    subscribe_each(conns, |_| filter.to_owned(), conc).await
}

/// Subscribes connection `i` to `filter_of(i)`, `conc` at a time; any refusal fails.
async fn subscribe_each(
    conns: &mut [Conn],
    filter_of: impl Fn(usize) -> String,
    conc: usize,
) -> Result<()> {
    let results: Vec<(String, Result<()>)> = stream::iter(conns.iter_mut().enumerate())
        .map(|(i, c)| {
            let f = [filter_of(i)];
            async move {
                let r = c.subscribe(&f, CONNECT_WAIT).await;
                let [f] = f;
                (f, r)
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let failed: Vec<_> = results.into_iter().filter(|(_, r)| r.is_err()).collect();
    if let Some((f, Err(e))) = failed.first() {
        bail!("{} subscriptions failed, e.g. to {f}: {e:#}", failed.len());
    }
    Ok(())
}

/// Connects `k` devices that stay idle, each subscribed to its own inbox: for mqim
/// devices `i{j}` of the storm accounts (round robin), for a plain broker clients
/// subscribed to `bench/i/{j}`. Nothing is sent to them.
async fn idle_devices(t: &Target, pop: Option<&Population>, k: usize) -> Result<Vec<Conn>> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let account = |j: usize| pop.map(|p| &p.accounts[j % p.accounts.len()]);
    let opts: Vec<(Opts, Handler)> = (0..k)
        .map(|j| {
            let mut o = match account(j) {
                Some(u) => Opts::new(t.mqtt, u.device(&format!("i{j}")), u.creds()),
                None => Opts::new(t.mqtt, format!("i{j}"), None),
            };
            o.keep_alive = Duration::from_secs(60);
            o.cap = 4;
            (o, crate::client::ignore())
        })
        .collect();
    let mut conns = connect_all(opts, 500, "idle devices failed to connect").await?;
    let filter_of = |j| match account(j) {
        Some(u) => u.inbox(),
        None => format!("bench/i/{j}"),
    };
    subscribe_each(&mut conns, filter_of, 500).await?;
    Ok(conns)
}

/// Errors reported by mqim in error frames, and acks seen.
#[derive(Default)]
struct Replies {
    acks: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Replies {
    fn error(&self, code: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert(code);
    }

    fn check(&self, out: &mut Outcome) {
        let n = self.errors.load(Ordering::Relaxed);
        if n > 0 {
            out.problems.push(format!(
                "{n} error frames from mqim (first: {})",
                lock(&self.first_error).clone().unwrap_or_default()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------
// 1:1

struct Phase {
    flows: Vec<Mutex<Seen>>,
    window: Vec<Semaphore>,
    sent: AtomicU64,
    recv: AtomicU64,
    dups: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// With `--timeline` only; off, the receive path does no more than before.
    timeline: Option<Mutex<Timeline>>,
}

impl Phase {
    fn new(n: usize, window: usize, timeline: bool) -> Phase {
        Phase {
            flows: (0..n).map(|_| Mutex::default()).collect(),
            window: (0..n).map(|_| Semaphore::new(window)).collect(),
            sent: AtomicU64::new(0),
            recv: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            ),
            timeline: timeline.then(Mutex::default),
        }
    }

    fn record(&self, flow: usize, n: u64, t: u64) {
        let Some(seen) = self.flows.get(flow) else {
            return;
        };
        if lock(seen).insert(n) {
            let lat = now_us().saturating_sub(t).max(1);
            lock(&self.hist).saturating_record(lat);
            if let Some(tl) = &self.timeline {
                let mut tl = lock(tl);
                let e = tl.entry(t / WINDOW_US).or_default();
                e.0 += 1;
                e.1 = e.1.max(lat);
                if lat > SLOW_US {
                    e.2 += 1;
                }
            }
            self.recv.fetch_add(1, Ordering::Relaxed);
            self.window[flow].add_permits(1);
        } else {
            self.dups.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ms(&self, q: f64) -> f64 {
        lock(&self.hist).value_at_quantile(q) as f64 / 1000.0
    }
}

/// `--timeline`: by 50 ms window of send time, (messages, slowest µs, messages over 10 ms).
type Timeline = BTreeMap<u64, (u64, u64, u64)>;

/// `--timeline`: the width of a window, and the latency that makes a message slow.
const WINDOW_US: u64 = 50_000;
const SLOW_US: u64 = 10_000;

/// `--timeline`: the windows of one rate that had a slow message, on stderr. Spikes at
/// a fixed period point at periodic work in the server (that is how the WAL
/// checkpoint's stalls were found).
fn print_timeline(rate: u64, tl: &Timeline) {
    let first = tl.keys().next().copied().unwrap_or(0);
    eprintln!(
        "timeline at {rate} msg/s: {} ms windows (by send time) with a message over {} ms; t=0 is {} ms since the Unix epoch",
        WINDOW_US / 1000,
        SLOW_US / 1000,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(now_us().saturating_sub(first * WINDOW_US) / 1000)
    );
    for (k, (n, slowest, slow)) in tl {
        if *slow > 0 {
            eprintln!(
                "  t={:>6} ms  sent {n:>5}  over {slow:>5}  slowest {:>7.1} ms",
                (k - first) * WINDOW_US / 1000,
                *slowest as f64 / 1000.0
            );
        }
    }
}

/// 1:1 end-to-end: a ring of `pairs` clients, each sending to the next; open-loop
/// rates stepped up, then a closed-window throughput phase.
pub async fn one_to_one(
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<crate::report::Metric>,
) -> Result<Outcome> {
    let idle_note = match s.idle_devices {
        0 => String::new(),
        k => format!(", {k} idle devices online"),
    };
    let title = format!(
        "1:1 end-to-end — {} pairs, {SIZE} B, QoS 1{idle_note}",
        s.pairs
    );
    let mut sink = Sink::new(&title, out);
    let mut res = Outcome::default();
    let n = s.pairs.max(2);
    let mqim = t.kind == Kind::Mqim;
    // Kept until the scenario ends.
    let _idle = idle_devices(t, pop, s.idle_devices).await?;
    let phases: Arc<Vec<Phase>> = Arc::new(
        (0..=s.rates.len())
            .map(|_| Phase::new(n, s.window, s.timeline))
            .collect(),
    );
    let replies = Arc::new(Replies::default());

    // Connect and subscribe.
    let mut opts = Vec::new();
    let mut dests = Vec::new();
    for i in 0..n {
        let next = (i + 1) % n;
        let (o, topic, to) = match pop {
            Some(p) => (
                Opts::new(t.mqtt, p.ring[i].device("r"), p.ring[i].creds()),
                p.ring[i].outbox(),
                Some(To::User(p.ring[next].id)),
            ),
            None => (
                Opts::new(t.mqtt, format!("p{i}"), None),
                format!("bench/p/{next}"),
                None,
            ),
        };
        let mut o = o;
        o.cap = 4096;
        let phases = phases.clone();
        let replies = replies.clone();
        let h: Handler = Arc::new(move |_, payload| match parse(mqim, payload) {
            Rx::Msg(c, _) => {
                if let Some([ph, flow, k, ts]) = fields::<4>(&c, "m") {
                    // mqim also sends a sender's message to its own inbox (for its other
                    // devices): not a delivery of this flow.
                    if flow as usize == i {
                        return;
                    }
                    if let Some(p) = phases.get(ph as usize) {
                        p.record(flow as usize, k, ts);
                    }
                }
            }
            Rx::Ack => {
                replies.acks.fetch_add(1, Ordering::Relaxed);
            }
            Rx::Error(code) => replies.error(code),
            Rx::Other => {}
        });
        opts.push((o, h));
        dests.push((topic, to));
    }
    let mut conns = connect_all(opts, 200, "connections failed").await?;
    for (i, c) in conns.iter_mut().enumerate() {
        let filter = match pop {
            Some(p) => p.ring[i].inbox(),
            None => format!("bench/p/{i}"),
        };
        c.subscribe(&[filter], CONNECT_WAIT).await?;
    }

    let send = |client: &rumqttc::AsyncClient, flow: usize, ph: usize, k: u64| {
        let (topic, to) = &dests[flow];
        let content = format!("m:{ph}:{flow}:{k}:{}:", now_us());
        let cmid = format!("{ph}-{k}");
        let body = payload(to.map(|to| (to, cmid.as_str())), &content, SIZE);
        client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, body)
    };

    // Open-loop rates.
    let mut best_rate = 0u64;
    let mut max_lag_ms = 0.0f64;
    for (ph, &rate) in s.rates.iter().enumerate() {
        let p = &phases[ph];
        let total = rate * s.phase.as_millis() as u64 / 1000;
        let mut counters = vec![0u64; n];
        let start = now_us();
        let mut k = 0u64;
        let mut refused = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while k < total {
            tick.tick().await;
            let el = now_us() - start;
            let due = (el as u128 * rate as u128 / 1_000_000) as u64;
            let due = due.min(total);
            if k < due {
                let intended = start + k * 1_000_000 / rate;
                max_lag_ms = max_lag_ms.max(now_us().saturating_sub(intended) as f64 / 1000.0);
            }
            while k < due {
                let flow = (k % n as u64) as usize;
                let kk = counters[flow];
                match send(&conns[flow].client, flow, ph, kk) {
                    Ok(()) => {
                        counters[flow] += 1;
                        p.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => refused += 1,
                }
                k += 1;
            }
        }
        let sent = p.sent.load(Ordering::Relaxed);
        wait_for(s.settle_limit, || p.recv.load(Ordering::Relaxed) >= sent).await;
        let recv = p.recv.load(Ordering::Relaxed);
        let lost = sent - recv.min(sent);
        res.lost += lost;
        res.dup += p.dups.load(Ordering::Relaxed);
        if refused > 0 {
            res.problems.push(format!(
                "load client queue full: {refused} sends not made at {rate}/s"
            ));
        }
        let p99 = p.ms(0.99);
        if let Some(tl) = &p.timeline {
            print_timeline(rate, &lock(tl));
        }
        let goal = if rate == 5_000 {
            Goal::AtMost(10.0)
        } else {
            Goal::None
        };
        sink.info(format!("p50 at {rate} msg/s"), "ms", p.ms(0.5));
        sink.add(format!("p99 at {rate} msg/s"), "ms", goal, p99);
        sink.info(format!("p99.9 at {rate} msg/s"), "ms", p.ms(0.999));
        if lost > 0 || p99 >= 50.0 {
            break;
        }
        best_rate = rate;
    }
    sink.info(
        "highest rate tried with p99 < 50 ms",
        "msg/s",
        best_rate as f64,
    );
    sink.info(
        "load client: worst send lag behind schedule",
        "ms",
        max_lag_ms,
    );

    // Throughput: each pair keeps `window` messages in flight end to end.
    let ph = s.rates.len();
    let p = &phases[ph];
    let cpu0 = t.cpu_secs().unwrap_or(0.0);
    let me0 = cpu_secs_of(std::process::id()).unwrap_or(0.0);
    let start = now_us();
    let end = start + s.tput.as_micros() as u64;
    let mut tasks = Vec::new();
    for (flow, c) in conns.iter().enumerate() {
        let client = c.client.clone();
        let phases = phases.clone();
        let (topic, to) = dests[flow].clone();
        tasks.push(tokio::spawn(async move {
            let p = &phases[ph];
            let mut k = 0u64;
            loop {
                let Ok(permit) = p.window[flow].acquire().await else {
                    break;
                };
                permit.forget();
                if now_us() >= end {
                    break;
                }
                let content = format!("m:{ph}:{flow}:{k}:{}:", now_us());
                let cmid = format!("{ph}-{k}");
                let body = payload(to.map(|to| (to, cmid.as_str())), &content, SIZE);
                if client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, body)
                    .await
                    .is_err()
                {
                    break;
                }
                p.sent.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
        }));
    }
    tokio::time::sleep_until(tokio::time::Instant::now() + s.tput).await;
    let in_time = p.recv.load(Ordering::Relaxed);
    let elapsed = (now_us() - start) as f64 / 1e6;
    let cpu1 = t.cpu_secs().unwrap_or(0.0);
    let me1 = cpu_secs_of(std::process::id()).unwrap_or(0.0);
    // Wake senders stuck on a full window so they see the end.
    for w in &p.window {
        w.add_permits(1);
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let sent = p.sent.load(Ordering::Relaxed);
    wait_for(s.settle_limit, || p.recv.load(Ordering::Relaxed) >= sent).await;
    let recv = p.recv.load(Ordering::Relaxed);
    res.lost += sent - recv.min(sent);
    res.dup += p.dups.load(Ordering::Relaxed);
    sink.add(
        format!("sustained throughput ({} in flight per pair)", s.window),
        "msg/s",
        Goal::AtLeastOf(Kind::Mosquitto),
        in_time as f64 / elapsed,
    );
    sink.info("p50 at saturation", "ms", p.ms(0.5));
    sink.info("p99 at saturation", "ms", p.ms(0.99));
    sink.info(
        "server CPU during throughput",
        "cores",
        (cpu1 - cpu0) / elapsed,
    );
    sink.info(
        "load generator CPU during throughput",
        "cores",
        (me1 - me0) / elapsed,
    );
    sink.info("lost", "msgs", res.lost as f64);
    sink.info("duplicated", "msgs", res.dup as f64);
    replies.check(&mut res);
    drop(conns);
    Ok(res)
}

// ---------------------------------------------------------------------------------
// Fan-out

/// Span of [`Fan::arrivals`]: a burst's deliveries later than this count in its last
/// millisecond.
const ARRIVAL_MS: usize = 60_000;

/// Deliveries of group messages to `m` subscribers.
struct Fan {
    m: usize,
    seen: Vec<Mutex<Seen>>,
    count: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    /// First delivery of each message to any member (µs): when the server began its
    /// fan-out.
    first: Vec<AtomicU64>,
    dups: AtomicU64,
    /// Burst deliveries per millisecond since `burst_t0` (the spread of a burst: a few
    /// stragglers can set its time to the last delivery).
    arrivals: Vec<AtomicU64>,
    /// Start of the burst (µs), 0 before it; messages below `burst_from` are not counted.
    burst_t0: AtomicU64,
    burst_from: AtomicU64,
}

impl Fan {
    fn new(m: usize, msgs: usize) -> Arc<Fan> {
        Arc::new(Fan {
            m,
            seen: (0..m).map(|_| Mutex::default()).collect(),
            count: (0..msgs).map(|_| AtomicU64::new(0)).collect(),
            last: (0..msgs).map(|_| AtomicU64::new(0)).collect(),
            first: (0..msgs).map(|_| AtomicU64::new(u64::MAX)).collect(),
            dups: AtomicU64::new(0),
            arrivals: (0..ARRIVAL_MS).map(|_| AtomicU64::new(0)).collect(),
            burst_t0: AtomicU64::new(0),
            burst_from: AtomicU64::new(u64::MAX),
        })
    }

    fn handler(self: &Arc<Self>, sub: usize, mqim: bool) -> Handler {
        let fan = self.clone();
        Arc::new(move |_, payload| {
            if let Rx::Msg(c, _) = parse(mqim, payload) {
                if let Some([idx, _]) = fields::<2>(&c, "g") {
                    let idx = idx as usize;
                    if idx >= fan.count.len() {
                        return;
                    }
                    if lock(&fan.seen[sub]).insert(idx as u64) {
                        let now = now_us();
                        fan.last[idx].fetch_max(now, Ordering::Relaxed);
                        fan.first[idx].fetch_min(now, Ordering::Relaxed);
                        fan.count[idx].fetch_add(1, Ordering::Relaxed);
                        if idx as u64 >= fan.burst_from.load(Ordering::Relaxed) {
                            let ms =
                                now.saturating_sub(fan.burst_t0.load(Ordering::Relaxed)) / 1000;
                            let ms = (ms as usize).min(ARRIVAL_MS - 1);
                            fan.arrivals[ms].fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        fan.dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Milliseconds from the burst's start until `q` of its deliveries had arrived.
    fn burst_quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .arrivals
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (ms, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want && total > 0 {
                return (ms + 1) as f64;
            }
        }
        f64::NAN
    }

    fn complete(&self, idx: usize) -> bool {
        self.count[idx].load(Ordering::Relaxed) >= self.m as u64
    }
}

/// Publishes group message `idx` (mqim: a send frame to group `to`).
async fn fan_publish(sender: &Conn, topic: &str, to: Option<To>, idx: usize) -> Result<u64> {
    let t = now_us();
    let content = format!("g:{idx}:{t}:");
    let cmid = format!("g{idx}");
    let body = payload(to.map(|to| (to, cmid.as_str())), &content, SIZE);
    sender
        .client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await?;
    Ok(t)
}

/// Times `rounds` single messages to the last subscriber, then a burst for
/// deliveries/s.
#[allow(clippy::too_many_arguments)]
async fn run_fan(
    t: &Target,
    fan: &Arc<Fan>,
    sender: &Conn,
    topic: &str,
    to: Option<To>,
    rounds: usize,
    burst: usize,
    s: &Sizes,
    sink: &mut Sink<'_>,
    res: &mut Outcome,
) -> Result<()> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let cpu_singles = t.cpu_secs().unwrap_or(0.0);
    for idx in 0..rounds {
        let t = fan_publish(sender, topic, to, idx).await?;
        if wait_for(s.settle_limit, || fan.complete(idx)).await {
            hist.saturating_record(fan.last[idx].load(Ordering::Relaxed).saturating_sub(t));
        }
    }
    let cpu_burst = t.cpu_secs().unwrap_or(0.0);
    let t0 = now_us();
    fan.burst_t0.store(t0, Ordering::Relaxed);
    fan.burst_from.store(rounds as u64, Ordering::Relaxed);
    for idx in rounds..rounds + burst {
        fan_publish(sender, topic, to, idx).await?;
    }
    wait_for(s.settle_limit, || {
        (rounds..rounds + burst).all(|i| fan.complete(i))
    })
    .await;
    let cpu_end = t.cpu_secs().unwrap_or(0.0);
    let last = (rounds..rounds + burst)
        .map(|i| fan.last[i].load(Ordering::Relaxed))
        .max()
        .unwrap_or(t0);
    let delivered: u64 = (rounds..rounds + burst)
        .map(|i| fan.count[i].load(Ordering::Relaxed))
        .sum();
    let total: u64 = fan.count.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    res.lost += (fan.m * (rounds + burst)) as u64 - total;
    res.dup += fan.dups.load(Ordering::Relaxed);
    let big = fan.m >= 10_000;
    sink.info(
        format!("time to last member, p50 of {rounds} single messages"),
        "ms",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
    );
    sink.add(
        format!("time to last member, worst of {rounds} single messages"),
        "ms",
        if big { Goal::AtMost(100.0) } else { Goal::None },
        hist.max() as f64 / 1000.0,
    );
    let secs = (last.saturating_sub(t0)).max(1) as f64 / 1e6;
    sink.add(
        format!("deliveries/s, burst of {burst} messages"),
        "msg/s",
        if big {
            Goal::AtLeast(500_000.0)
        } else {
            Goal::None
        },
        delivered as f64 / secs,
    );
    sink.info(
        format!("burst of {burst}: time to last delivery"),
        "ms",
        secs * 1000.0,
    );
    let first_of_last = fan.first[rounds + burst - 1].load(Ordering::Relaxed);
    sink.info(
        format!("burst of {burst}: time to the first delivery of its last message"),
        "ms",
        first_of_last.saturating_sub(t0) as f64 / 1000.0,
    );
    for (q, name) in [(0.5, "half"), (0.99, "99 %")] {
        sink.info(
            format!("burst of {burst}: time to {name} of its deliveries"),
            "ms",
            fan.burst_quantile_ms(q),
        );
    }
    // The server's CPU time per delivery varies less from run to run than the rates: it
    // is what one delivery costs, whatever else the shared cores were doing.
    let per = |cpu: f64, n: usize| cpu / (fan.m * n).max(1) as f64 * 1e6;
    sink.info(
        format!("server CPU per delivery, {rounds} single messages"),
        "µs",
        per(cpu_burst - cpu_singles, rounds),
    );
    sink.info(
        format!("server CPU per delivery, burst of {burst}"),
        "µs",
        per(cpu_end - cpu_burst, burst),
    );
    Ok(())
}

/// Sender of group messages: mqim → a device of `owner` subscribed to its inbox (for
/// errors); plain → a client publishing on the group topic.
async fn fan_sender(
    t: &Target,
    owner: Option<&User>,
    replies: &Arc<Replies>,
) -> Result<(Conn, String)> {
    let mqim = t.kind == Kind::Mqim;
    let r = replies.clone();
    let h: Handler = Arc::new(move |_, payload| match parse(mqim, payload) {
        Rx::Error(code) => r.error(code),
        Rx::Ack => {
            r.acks.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    });
    match owner {
        Some(u) => {
            let mut o = Opts::new(t.mqtt, u.device("gsend"), u.creds());
            o.cap = 4096;
            let mut c = Conn::connect(o, h, CONNECT_WAIT).await?;
            c.subscribe(&[u.inbox()], CONNECT_WAIT).await?;
            Ok((c, u.outbox()))
        }
        None => {
            let mut o = Opts::new(t.mqtt, "gsend", None);
            o.cap = 4096;
            Ok((Conn::connect(o, h, CONNECT_WAIT).await?, String::new()))
        }
    }
}

/// Group fan-out to a `group`-member group, one device per member.
pub async fn fan_out(
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<crate::report::Metric>,
) -> Result<Outcome> {
    let title = format!("group fan-out — {} members, {SIZE} B, QoS 1", s.group);
    let mut sink = Sink::new(&title, out);
    let mut res = Outcome::default();
    let mqim = t.kind == Kind::Mqim;
    let m = s.group;
    let fan = Fan::new(m, s.group_rounds + s.group_burst);
    let (filter, to) = match pop {
        Some(p) => (
            format!("im/g/{}/in/json", p.group),
            Some(To::Group(p.group)),
        ),
        None => ("bench/g".to_owned(), None),
    };
    let opts: Vec<(Opts, Handler)> = (0..m)
        .map(|i| {
            let o = match pop {
                Some(p) => Opts::new(t.mqtt, p.ring[i].device("g"), p.ring[i].creds()),
                None => Opts::new(t.mqtt, format!("g{i}"), None),
            };
            (o, fan.handler(i, mqim))
        })
        .collect();
    let mut conns = connect_all(opts, 200, "connections failed").await?;
    subscribe_many(&mut conns, &filter, 200).await?;
    let replies = Arc::new(Replies::default());
    let (sender, outbox) = fan_sender(t, pop.map(|p| &p.ring[0]), &replies).await?;
    let topic = if mqim { outbox } else { filter.clone() };
    run_fan(
        t,
        &fan,
        &sender,
        &topic,
        to,
        s.group_rounds,
        s.group_burst,
        s,
        &mut sink,
        &mut res,
    )
    .await?;
    sink.info("lost", "msgs", res.lost as f64);
    sink.info("duplicated", "msgs", res.dup as f64);
    replies.check(&mut res);
    Ok(res)
}

// ---------------------------------------------------------------------------------
// Connect storm, idle connections, broadcast

/// 10,000 clients connect (storm); they stay idle (memory, CPU); then they all
/// subscribe to one group and receive a broadcast.
pub async fn storm_idle_broadcast(
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<crate::report::Metric>,
) -> Result<Outcome> {
    let n = s.accounts * s.devices;
    let mut res = Outcome::default();
    let mqim = t.kind == Kind::Mqim;
    let fan = Fan::new(n, s.bcast_rounds + s.bcast_burst);
    let opts: Vec<(Opts, Handler)> = (0..n)
        .map(|i| {
            let mut o = match pop {
                Some(p) => {
                    let u = &p.accounts[i / s.devices];
                    Opts::new(t.mqtt, u.device(&format!("s{}", i % s.devices)), u.creds())
                }
                None => Opts::new(t.mqtt, format!("s{i}"), None),
            };
            o.keep_alive = Duration::from_secs(60);
            o.cap = 16;
            (o, fan.handler(i, mqim))
        })
        .collect();

    let rss0 = t.rss_kib().unwrap_or(0);
    let k0 = kernel_tcp_bytes().unwrap_or(0);
    let cpu0 = t.cpu_secs().unwrap_or(0.0);
    let t0 = now_us();
    let (conns, failed, first) = connect_many(opts, s.storm_concurrency).await;
    let storm_secs = (now_us() - t0) as f64 / 1e6;
    let cpu_storm = t.cpu_secs().unwrap_or(0.0) - cpu0;
    let ok = n - failed;
    if failed > 0 {
        res.problems.push(format!(
            "{failed} of {n} connects failed: {}",
            first.unwrap_or_default()
        ));
    }
    {
        let title = format!(
            "connect storm — {n} clients, {} connecting at once",
            s.storm_concurrency
        );
        let mut sink = Sink::new(&title, out);
        sink.add(
            "time until all connected",
            "s",
            Goal::AtMost(5.0),
            storm_secs,
        );
        sink.info("CONNACKs/s", "conn/s", ok as f64 / storm_secs);
        sink.info(
            "server CPU during the storm",
            "cores",
            cpu_storm / storm_secs,
        );
        sink.info("failed connects", "conns", failed as f64);
    }
    tokio::time::sleep(s.settle).await;
    let rss1 = t.rss_kib().unwrap_or(0);
    let k1 = kernel_tcp_bytes().unwrap_or(0);
    let c1 = t.cpu_secs().unwrap_or(0.0);
    tokio::time::sleep(s.idle).await;
    let c2 = t.cpu_secs().unwrap_or(0.0);
    {
        let title = format!("idle connections — {n} authenticated clients");
        let mut sink = Sink::new(&title, out);
        let per = (rss1.saturating_sub(rss0)) as f64 / ok.max(1) as f64;
        sink.add(
            "server memory per connection (RSS growth)",
            "KiB",
            Goal::AtMost(20.0),
            per,
        );
        sink.info("server RSS before connecting", "MiB", rss0 as f64 / 1024.0);
        sink.info("server RSS with all connected", "MiB", rss1 as f64 / 1024.0);
        sink.info(
            "kernel TCP memory per connection (both ends)",
            "KiB",
            k1.saturating_sub(k0) as f64 / 1024.0 / ok.max(1) as f64,
        );
        sink.info(
            format!("server CPU at rest ({} s)", s.idle.as_secs()),
            "%",
            (c2 - c1) / s.idle.as_secs_f64() * 100.0,
        );
    }

    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    let (filter, to) = match pop {
        Some(p) => (
            format!("im/g/{}/in/json", p.bcast_group),
            Some(To::Group(p.bcast_group)),
        ),
        None => ("bench/b".to_owned(), None),
    };
    subscribe_many(&mut conns, &filter, s.storm_concurrency).await?;
    let replies = Arc::new(Replies::default());
    let (sender, outbox) = fan_sender(t, pop.map(|p| &p.accounts[0]), &replies).await?;
    let topic = if mqim { outbox } else { filter.clone() };
    // Same title for every system, so that the rows line up.
    let title = format!(
        "broadcast — {n} online members ({} accounts × {} devices on mqim), {SIZE} B, QoS 1",
        s.accounts, s.devices
    );
    let mut sink = Sink::new(&title, out);
    let cpu_b = t.cpu_secs().unwrap_or(0.0);
    let me_b = cpu_secs_of(std::process::id()).unwrap_or(0.0);
    let tb = now_us();
    // A fan of fewer subscribers than planned (failed connects) never completes.
    let mut fan_res = Outcome::default();
    if failed == 0 {
        run_fan(
            t,
            &fan,
            &sender,
            &topic,
            to,
            s.bcast_rounds,
            s.bcast_burst,
            s,
            &mut sink,
            &mut fan_res,
        )
        .await?;
        let secs = (now_us() - tb) as f64 / 1e6;
        sink.info(
            "server CPU during the broadcast",
            "cores",
            (t.cpu_secs().unwrap_or(0.0) - cpu_b) / secs,
        );
        sink.info(
            "load generator CPU during the broadcast",
            "cores",
            (cpu_secs_of(std::process::id()).unwrap_or(0.0) - me_b) / secs,
        );
        // Memory a server keeps after a burst, with every member still online.
        let rss_after = t.rss_kib().unwrap_or(0);
        tokio::time::sleep(s.rest).await;
        let rss_rest = t.rss_kib().unwrap_or(0);
        sink.info(
            "server RSS right after the broadcast",
            "MiB",
            rss_after as f64 / 1024.0,
        );
        sink.info(
            format!(
                "server RSS {} s later, all members online and quiet",
                s.rest.as_secs()
            ),
            "MiB",
            rss_rest as f64 / 1024.0,
        );
    }
    res.lost += fan_res.lost;
    res.dup += fan_res.dup;
    sink.info("lost", "msgs", res.lost as f64);
    sink.info("duplicated", "msgs", res.dup as f64);
    replies.check(&mut res);
    drop(sender);
    drop(conns);
    Ok(res)
}

// ---------------------------------------------------------------------------------
// Offline drain

struct DrainRx {
    seen: Mutex<Seen>,
    order: Mutex<(u64, i64)>,
    count: AtomicU64,
    dups: AtomicU64,
    disorder: AtomicU64,
    last: AtomicU64,
}

impl DrainRx {
    fn new() -> Arc<DrainRx> {
        Arc::new(DrainRx {
            seen: Mutex::default(),
            order: Mutex::new((0, 0)),
            count: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            disorder: AtomicU64::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn handler(self: &Arc<Self>, mqim: bool) -> Handler {
        let me = self.clone();
        Arc::new(move |_, payload| {
            if let Rx::Msg(c, seq) = parse(mqim, payload) {
                if let Some([_, k]) = fields::<2>(&c, "d") {
                    {
                        // In order: message numbers (and mqim's seqs) strictly ascending.
                        let mut o = lock(&me.order);
                        let seq = seq.unwrap_or(0);
                        let first = me.count.load(Ordering::Relaxed) == 0
                            && me.dups.load(Ordering::Relaxed) == 0;
                        if !first && (k <= o.0 || (seq != 0 && seq <= o.1)) {
                            me.disorder.fetch_add(1, Ordering::Relaxed);
                        }
                        *o = (k, seq);
                    }
                    if lock(&me.seen).insert(k) {
                        me.last.fetch_max(now_us(), Ordering::Relaxed);
                        me.count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        me.dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }
}

/// Offline drain: messages wait for devices that are away; then the devices connect
/// and receive them all, in order.
pub async fn offline_drain(
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<crate::report::Metric>,
) -> Result<Outcome> {
    let title = "offline drain — messages waiting, then the device connects (QoS 1)";
    let mut sink = Sink::new(title, out);
    let mut res = Outcome::default();
    let mqim = t.kind == Kind::Mqim;
    let counts: Vec<usize> = std::iter::once(s.drain_one)
        .chain(std::iter::repeat_n(s.drain_each, s.drain_many))
        .collect();
    let total: usize = counts.iter().sum();
    let rxs: Vec<Arc<DrainRx>> = counts.iter().map(|_| DrainRx::new()).collect();

    // Plain brokers queue for a persistent session: subscribe once, then go away.
    if pop.is_none() {
        for r in 0..counts.len() {
            let mut o = Opts::new(t.mqtt, format!("dr{r}"), None);
            o.clean = false;
            let mut c = Conn::connect(o, client::ignore(), CONNECT_WAIT).await?;
            c.subscribe(&[format!("bench/d/{r}")], CONNECT_WAIT).await?;
            c.disconnect().await;
        }
    }

    // Fill: send everything while nobody is online.
    let replies = Arc::new(Replies::default());
    let pubacks = Arc::new(AtomicU64::new(0));
    let window = Arc::new(Semaphore::new(1000));
    let sender = {
        let r = replies.clone();
        let w = window.clone();
        let h: Handler = Arc::new(move |_, payload| match parse(mqim, payload) {
            Rx::Ack => {
                r.acks.fetch_add(1, Ordering::Relaxed);
                w.add_permits(1);
            }
            Rx::Error(code) => {
                r.error(code);
                w.add_permits(1);
            }
            _ => {}
        });
        match pop {
            Some(p) => {
                let u = &p.drain_sender;
                let mut o = Opts::new(t.mqtt, u.device("ds"), u.creds());
                o.cap = 4096;
                let mut c = Conn::connect(o, h, CONNECT_WAIT).await?;
                c.subscribe(&[u.inbox()], CONNECT_WAIT).await?;
                c
            }
            None => {
                let mut o = Opts::new(t.mqtt, "dsend", None);
                o.cap = 4096;
                o.pubacks = Some(pubacks.clone());
                Conn::connect(o, h, CONNECT_WAIT).await?
            }
        }
    };
    let tf = now_us();
    for (r, &count) in counts.iter().enumerate() {
        for k in 0..count {
            let content = format!("d:{r}:{k}:");
            let (topic, body) = match pop {
                Some(p) => {
                    window.acquire().await?.forget();
                    let cmid = format!("d{r}-{k}");
                    (
                        p.drain_sender.outbox(),
                        payload(
                            Some((To::User(p.drain[r].id), cmid.as_str())),
                            &content,
                            SIZE,
                        ),
                    )
                }
                None => (format!("bench/d/{r}"), payload(None, &content, SIZE)),
            };
            sender
                .client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await?;
        }
    }
    let stored = wait_for(s.limit / 2, || {
        let n = if mqim {
            replies.acks.load(Ordering::Relaxed) + replies.errors.load(Ordering::Relaxed)
        } else {
            pubacks.load(Ordering::Relaxed)
        };
        n >= total as u64
    })
    .await;
    if !stored {
        bail!("the {total} messages were not all acknowledged in time");
    }
    sink.info(
        if mqim {
            "fill: messages stored (acked) per second"
        } else {
            "fill: messages queued (PUBACKed) per second"
        },
        "msg/s",
        total as f64 / ((now_us() - tf) as f64 / 1e6),
    );
    drop(sender);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Drain: one device, then many at once.
    let connect = |r: usize| {
        let (o, filter) = match pop {
            Some(p) => (
                Opts::new(t.mqtt, p.drain[r].device("new"), p.drain[r].creds()),
                Some(p.drain[r].inbox()),
            ),
            None => {
                let mut o = Opts::new(t.mqtt, format!("dr{r}"), None);
                o.clean = false;
                (o, None)
            }
        };
        let h = rxs[r].handler(mqim);
        async move {
            let mut c = Conn::connect(o, h, CONNECT_WAIT).await?;
            if let Some(f) = filter {
                c.subscribe(&[f], CONNECT_WAIT).await?;
            }
            Ok::<Conn, anyhow::Error>(c)
        }
    };
    let done = |r: usize| rxs[r].count.load(Ordering::Relaxed) >= counts[r] as u64;

    let t0 = now_us();
    let one = connect(0).await?;
    let complete = wait_for(s.limit / 4, || done(0)).await;
    let secs = rxs[0].last.load(Ordering::Relaxed).saturating_sub(t0) as f64 / 1e6;
    if complete {
        sink.add(
            format!("1 device × {}: connect to last message", s.drain_one),
            "s",
            Goal::AtMost(1.0),
            secs,
        );
        sink.info(
            format!("1 device × {}: messages/s", s.drain_one),
            "msg/s",
            s.drain_one as f64 / secs.max(1e-6),
        );
    }
    drop(one);

    let t0 = now_us();
    let many: Vec<Result<Conn>> = stream::iter(1..counts.len())
        .map(connect)
        .buffer_unordered(s.drain_many.max(1))
        .collect()
        .await;
    let many: Vec<Conn> = many.into_iter().collect::<Result<_>>()?;
    let complete = wait_for(s.limit / 4, || (1..counts.len()).all(done)).await;
    let last = (1..counts.len())
        .map(|r| rxs[r].last.load(Ordering::Relaxed))
        .max()
        .unwrap_or(t0);
    let secs = last.saturating_sub(t0) as f64 / 1e6;
    if complete && s.drain_many > 0 {
        sink.info(
            format!(
                "{} devices × {}: connect to last message",
                s.drain_many, s.drain_each
            ),
            "s",
            secs,
        );
        sink.info(
            format!("{} devices × {}: messages/s", s.drain_many, s.drain_each),
            "msg/s",
            (s.drain_many * s.drain_each) as f64 / secs.max(1e-6),
        );
    }
    drop(many);

    let got: u64 = rxs.iter().map(|r| r.count.load(Ordering::Relaxed)).sum();
    res.lost = total as u64 - got.min(total as u64);
    res.dup = rxs.iter().map(|r| r.dups.load(Ordering::Relaxed)).sum();
    let disorder: u64 = rxs.iter().map(|r| r.disorder.load(Ordering::Relaxed)).sum();
    if disorder > 0 {
        res.problems
            .push(format!("{disorder} messages arrived out of order"));
    }
    sink.info("lost", "msgs", res.lost as f64);
    sink.info("duplicated", "msgs", res.dup as f64);
    sink.info("out of order", "msgs", disorder as f64);
    replies.check(&mut res);
    Ok(res)
}

// ---------------------------------------------------------------------------------
// Soak

/// Soak: receivers of the soak, one per flow, and what they got.
struct SoakRx {
    seen: Vec<Mutex<Seen>>,
    recv: AtomicU64,
    dups: AtomicU64,
}

impl SoakRx {
    fn handler(self: &Arc<Self>, mqim: bool) -> Handler {
        let me = self.clone();
        Arc::new(move |_, payload| {
            if let Rx::Msg(c, _) = parse(mqim, payload) {
                if let Some([flow, k]) = fields::<2>(&c, "w") {
                    let Some(seen) = me.seen.get(flow as usize) else {
                        return;
                    };
                    if lock(seen).insert(k) {
                        me.recv.fetch_add(1, Ordering::Relaxed);
                    } else {
                        me.dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }
}

/// Least-squares slope of `(seconds, value)` samples, per minute.
fn slope_per_min(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    sxy / sxx * 60.0
}

/// The soak's rows for one memory figure sampled as `(seconds, MiB)` over a run of
/// `secs`: after warm-up (the first tenth: buffers, caches, the first reconnects), when
/// sending stopped and after `rest` s at rest (`at`), and its growth over the second
/// half.
fn memory_rows(
    sink: &mut Sink<'_>,
    what: &str,
    samples: &[(f64, f64)],
    secs: f64,
    at: [f64; 2],
    rest: u64,
) {
    let warm = samples
        .iter()
        .find(|x| x.0 >= secs / 10.0)
        .or(samples.last())
        .map_or(0.0, |x| x.1);
    let half: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|x| x.0 >= secs / 2.0)
        .collect();
    sink.info(
        format!("{what} after warm-up (a tenth of the run)"),
        "MiB",
        warm,
    );
    sink.info(format!("{what} when sending stopped"), "MiB", at[0]);
    sink.info(
        format!("{what} growth over the second half"),
        "MiB/min",
        slope_per_min(&half),
    );
    sink.info(format!("{what} after {rest} s at rest"), "MiB", at[1]);
}

/// mqim's live heap (jemalloc's allocated bytes) and, of it, the broker's per-topic
/// message logs, from one read of `/metrics`, in MiB.
async fn heap_mib(api: Option<&Api>) -> [Option<f64>; 2] {
    let Some(api) = api else {
        return [None, None];
    };
    api.metrics(["mqim_heap_allocated_bytes", "mqim_broker_log_bytes"])
        .await
        .map(|v| v.map(|b| b / 1024.0 / 1024.0))
}

/// Soak: steady 1:1 traffic for a long time (`--soak`, 120 s by default) while the
/// receivers come and go — every few seconds a tenth of them disconnect and come back
/// a second later, and get what they missed (mqim from its store, a plain broker from
/// the persistent session). The server's RSS (and mqim's live heap) is sampled every
/// second: a leak per message or per reconnect shows as a slope. Nothing may be lost;
/// a message received again after a reconnect (its PUBACK did not reach the server
/// before the socket closed) is at-least-once delivery and only counted.
pub async fn soak(
    t: &Target,
    pop: Option<&Population>,
    s: &Sizes,
    out: &mut Vec<crate::report::Metric>,
) -> Result<Outcome> {
    let mqim = t.kind == Kind::Mqim;
    // Flow j: account 2j sends to account 2j+1 (friends in the population's ring).
    let flows = (s.pairs.max(2) / 2).max(1);
    let per_churn = (flows / 10).max(1);
    let title = format!(
        "soak — {flows} flows, {} msg/s for {} s, {per_churn} receivers reconnecting every {:.1} s, {SIZE} B, QoS 1",
        s.soak_rate,
        s.soak.as_secs(),
        s.soak_churn.as_secs_f64()
    );
    let mut sink = Sink::new(&title, out);
    let mut res = Outcome::default();
    let api = match &t.http {
        Some(base) => Some(Api::new(base)?),
        None => None,
    };
    let rx = Arc::new(SoakRx {
        seen: (0..flows).map(|_| Mutex::default()).collect(),
        recv: AtomicU64::new(0),
        dups: AtomicU64::new(0),
    });
    let replies = Arc::new(Replies::default());

    // Receivers: persistent sessions on a plain broker, so that it queues for them.
    let mut rx_opts = Vec::new();
    let mut rx_filters = Vec::new();
    for j in 0..flows {
        let (mut o, filter) = match pop {
            Some(p) => {
                let u = &p.ring[2 * j + 1];
                (Opts::new(t.mqtt, u.device("wr"), u.creds()), u.inbox())
            }
            None => (
                Opts::new(t.mqtt, format!("wr{j}"), None),
                format!("bench/w/{j}"),
            ),
        };
        o.clean = mqim;
        o.cap = 16;
        rx_opts.push(o);
        rx_filters.push(filter);
    }
    let handler = rx.handler(mqim);
    let mut receivers = connect_all(
        rx_opts
            .iter()
            .map(|o| (o.clone(), handler.clone()))
            .collect(),
        200,
        "soak receivers failed to connect",
    )
    .await?;
    subscribe_each(&mut receivers, |j| rx_filters[j].clone(), 200).await?;
    let receivers: Vec<Option<Conn>> = receivers.into_iter().map(Some).collect();

    // Senders: mqim's subscribe to their inbox for acks and error frames.
    let mut tx_opts = Vec::new();
    let mut dests = Vec::new();
    for j in 0..flows {
        let (mut o, topic, to) = match pop {
            Some(p) => (
                Opts::new(t.mqtt, p.ring[2 * j].device("ws"), p.ring[2 * j].creds()),
                p.ring[2 * j].outbox(),
                Some(To::User(p.ring[2 * j + 1].id)),
            ),
            None => (
                Opts::new(t.mqtt, format!("ws{j}"), None),
                format!("bench/w/{j}"),
                None,
            ),
        };
        o.cap = 4096;
        let r = replies.clone();
        let h: Handler = Arc::new(move |_, payload| match parse(mqim, payload) {
            Rx::Ack => {
                r.acks.fetch_add(1, Ordering::Relaxed);
            }
            Rx::Error(code) => r.error(code),
            _ => {}
        });
        tx_opts.push((o, h));
        dests.push((topic, to));
    }
    let mut senders = connect_all(tx_opts, 200, "soak senders failed to connect").await?;
    if let Some(p) = pop {
        subscribe_each(&mut senders, |j| p.ring[2 * j].inbox(), 200).await?;
    }

    // Churn: a task owns the receivers; it hands them back when the soak ends.
    let start = now_us();
    let end = start + s.soak.as_micros() as u64;
    let (churn, gap) = (s.soak_churn, s.soak_gap);
    let reconnects = Arc::new(AtomicU64::new(0));
    let churner = {
        let reconnects = reconnects.clone();
        tokio::spawn(async move {
            let mut receivers = receivers;
            let mut next = 0usize;
            while now_us() + (churn + gap).as_micros() as u64 <= end {
                tokio::time::sleep(churn).await;
                let batch: Vec<usize> = (0..per_churn).map(|i| (next + i) % flows).collect();
                next = (next + per_churn) % flows;
                let gone: Vec<Conn> = batch.iter().filter_map(|&j| receivers[j].take()).collect();
                futures::future::join_all(gone.into_iter().map(|c| c.disconnect())).await;
                tokio::time::sleep(gap).await;
                let back = futures::future::join_all(batch.iter().map(|&j| {
                    let o = rx_opts[j].clone();
                    let h = handler.clone();
                    let f = rx_filters[j].clone();
                    async move {
                        let mut c = Conn::connect(o, h, CONNECT_WAIT).await?;
                        c.subscribe(&[f], CONNECT_WAIT).await?;
                        anyhow::Ok(c)
                    }
                }))
                .await;
                for (&j, c) in batch.iter().zip(back) {
                    receivers[j] = Some(c?);
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(receivers)
        })
    };

    // Steady sends, and a memory sample every second.
    let rss_mib = || t.rss_kib().unwrap_or(0) as f64 / 1024.0;
    let cpu0 = t.cpu_secs().unwrap_or(0.0);
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let mut heap: Vec<(f64, f64)> = Vec::new();
    let mut counters = vec![0u64; flows];
    let mut k = 0u64;
    let mut refused = 0u64;
    let mut next_sample = start;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tick.tick().await;
        let now = now_us();
        if now >= end {
            break;
        }
        if now >= next_sample {
            let secs = (now - start) as f64 / 1e6;
            rss.push((secs, rss_mib()));
            if let [Some(h), _] = heap_mib(api.as_ref()).await {
                heap.push((secs, h));
            }
            next_sample += 1_000_000;
        }
        let due = ((now - start) as u128 * s.soak_rate as u128 / 1_000_000) as u64;
        while k < due {
            let flow = (k % flows as u64) as usize;
            let n = counters[flow];
            let (topic, to) = &dests[flow];
            let cmid = format!("w-{n}");
            let body = payload(
                to.map(|to| (to, cmid.as_str())),
                &format!("w:{flow}:{n}:"),
                SIZE,
            );
            match senders[flow]
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, body)
            {
                Ok(()) => counters[flow] += 1,
                Err(_) => refused += 1,
            }
            k += 1;
        }
    }
    let secs = (now_us() - start) as f64 / 1e6;
    let cpu = t.cpu_secs().unwrap_or(0.0) - cpu0;
    let receivers = churner.await??;
    let sent: u64 = counters.iter().sum();
    wait_for(s.settle_limit, || rx.recv.load(Ordering::Relaxed) >= sent).await;
    let recv = rx.recv.load(Ordering::Relaxed);
    res.lost += sent - recv.min(sent);
    if refused > 0 {
        res.problems
            .push(format!("load client queue full: {refused} sends not made"));
    }
    replies.check(&mut res);
    if mqim {
        wait_for(s.settle_limit, || {
            replies.acks.load(Ordering::Relaxed) >= sent
        })
        .await;
        let acks = replies.acks.load(Ordering::Relaxed);
        if acks < sent {
            res.problems
                .push(format!("{} of {sent} sends not acked", sent - acks));
        }
    }
    let rss_end = rss_mib();
    let [heap_end, log_end] = heap_mib(api.as_ref()).await;
    tokio::time::sleep(s.rest).await;
    let rss_rest = rss_mib();
    let [heap_rest, _] = heap_mib(api.as_ref()).await;

    sink.info("messages sent", "msgs", sent as f64);
    sink.info("sent per second", "msg/s", sent as f64 / secs);
    sink.info(
        "receiver reconnects",
        "conns",
        reconnects.load(Ordering::Relaxed) as f64,
    );
    sink.info("server CPU during the soak", "cores", cpu / secs);
    let rest = s.rest.as_secs();
    memory_rows(
        &mut sink,
        "server RSS",
        &rss,
        secs,
        [rss_end, rss_rest],
        rest,
    );
    if mqim {
        let heap_at = [heap_end.unwrap_or(0.0), heap_rest.unwrap_or(0.0)];
        memory_rows(
            &mut sink,
            "live heap (mqim: jemalloc allocated)",
            &heap,
            secs,
            heap_at,
            rest,
        );
        sink.info(
            "of it the broker's per-topic message logs, when sending stopped",
            "MiB",
            log_end.unwrap_or(0.0),
        );
    }
    sink.info(
        "received again after a reconnect (at-least-once)",
        "msgs",
        rx.dups.load(Ordering::Relaxed) as f64,
    );
    sink.info("lost", "msgs", res.lost as f64);
    drop(receivers);
    drop(senders);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::slope_per_min;

    #[test]
    fn slope_is_per_minute_and_flat_for_flat_samples() {
        let rising: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, 100.0 + i as f64 * 0.5))
            .collect();
        assert!((slope_per_min(&rising) - 30.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 42.0)).collect();
        assert_eq!(slope_per_min(&flat), 0.0);
        assert_eq!(slope_per_min(&[(1.0, 5.0)]), 0.0);
    }
}
