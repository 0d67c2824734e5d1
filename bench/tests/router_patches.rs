//! Router patches of the vendored rumqttd (`vendor/README.md`) on paths mqim itself does
//! not take, tested against the standalone broker binary (the same vendored crate with
//! rumqttd's plain codec) with real MQTT clients.
//!
//! * Topic index: the router finds the filters of a topic by a hash lookup of the
//!   identical filter plus a scan of the wildcard filters only, caches the result per
//!   topic, and reads the retained message of a filter without a wildcard directly.
//!   mqim subscribes only to exact topics, so the wildcard paths are tested here:
//!   exact, `+` and `#` filters; filters added before and after a topic was first
//!   published (the per-topic cache); retained messages for exact and wildcard filters.
//! * Log retention: a log drops what all its readers passed and is freed with its last
//!   subscriber. mqim's sessions are all clean; here persistent sessions and shared
//!   subscriptions keep rumqttd's behaviour, and a freed filter's slot, reused by
//!   another filter, mixes nothing up.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// The standalone broker, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Broker {
    start_broker_with(&[])
}

/// The broker with extra arguments after the port (segment bytes and count).
fn start_broker_with(args: &[&str]) -> Broker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqim-bench-rumqttd"))
        .arg("0")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqim-bench-rumqttd");
    let stdout = child.stdout.take().expect("broker stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the broker's first line");
    let addr = line
        .trim()
        .strip_prefix("rumqttd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"));
    Broker { child, port }
}

/// A connected client and what it receives: (topic, payload, retain flag).
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, String, bool)>,
    /// One `()` per SUBACK or UNSUBACK.
    subacks: mpsc::UnboundedReceiver<()>,
}

async fn connect(port: u16, id: &str) -> Client {
    connect_with(port, id, true).await
}

/// A client with the given clean-session flag.
async fn connect_with(port: u16, id: &str, clean: bool) -> Client {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    let (client, mut ev) = AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (stx, subacks) = mpsc::unbounded_channel();
    let (ctx, crx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ctx = Some(ctx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(c) = ctx.take() {
                        let _ = c.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    let _ = tx.send((topic, payload, p.retain));
                }
                Ok(Event::Incoming(Packet::SubAck(_) | Packet::UnsubAck(_))) => {
                    let _ = stx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), crx)
        .await
        .expect("CONNACK within 5 s")
        .expect("event loop alive");
    Client {
        client,
        rx,
        subacks,
    }
}

impl Client {
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        tokio::time::timeout(Duration::from_secs(5), self.subacks.recv())
            .await
            .expect("SUBACK within 5 s")
            .expect("event loop alive");
    }

    async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        tokio::time::timeout(Duration::from_secs(5), self.subacks.recv())
            .await
            .expect("UNSUBACK within 5 s")
            .expect("event loop alive");
    }

    /// Disconnects cleanly and waits until the event loop has ended.
    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let mut rx = self.rx;
        // The event loop drops its sender once the connection is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.recv().await.is_some() {}
        })
        .await;
    }

    async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("queue PUBLISH");
    }

    /// The next `n` publishes received, sorted (deliveries from different filters
    /// may arrive in any order).
    async fn next(&mut self, n: usize) -> Vec<(String, String, bool)> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(m)) => got.push(m),
                _ => panic!("expected {n} publishes within 5 s, got {got:?}"),
            }
        }
        got.sort();
        got
    }

    /// Nothing more arrives within a short wait.
    async fn nothing_more(&mut self) {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await
        {
            panic!("unexpected publish {m:?}");
        }
    }
}

fn m(topic: &str, payload: &str, retain: bool) -> (String, String, bool) {
    (topic.to_owned(), payload.to_owned(), retain)
}

#[tokio::test]
async fn exact_and_wildcard_filters_match_before_and_after_a_topic_is_known() {
    let broker = start_broker();
    let p = broker.port;
    let publisher = connect(p, "pub").await;
    let mut exact = connect(p, "exact").await;
    exact.subscribe("t/a").await;
    let mut plus = connect(p, "plus").await;
    plus.subscribe("t/+").await;
    let mut hash = connect(p, "hash").await;
    hash.subscribe("t/#").await;
    let mut other = connect(p, "other").await;
    other.subscribe("t/b").await;

    publisher.publish("t/a", "1", false).await;
    assert_eq!(exact.next(1).await, vec![m("t/a", "1", false)]);
    assert_eq!(plus.next(1).await, vec![m("t/a", "1", false)]);
    assert_eq!(hash.next(1).await, vec![m("t/a", "1", false)]);
    publisher.publish("t/b", "2", false).await;
    assert_eq!(other.next(1).await, vec![m("t/b", "2", false)]);
    assert_eq!(plus.next(1).await, vec![m("t/b", "2", false)]);
    assert_eq!(hash.next(1).await, vec![m("t/b", "2", false)]);
    other.nothing_more().await;
    exact.nothing_more().await;

    // "u/x" becomes known (cached) while only a wildcard filter matches it; an exact
    // filter added afterwards must join its cached list.
    let mut late = connect(p, "late").await;
    late.subscribe("u/+").await;
    publisher.publish("u/x", "3", false).await;
    assert_eq!(late.next(1).await, vec![m("u/x", "3", false)]);
    let mut late_exact = connect(p, "late-exact").await;
    late_exact.subscribe("u/x").await;
    publisher.publish("u/x", "4", false).await;
    assert_eq!(late_exact.next(1).await, vec![m("u/x", "4", false)]);
    assert_eq!(late.next(1).await, vec![m("u/x", "4", false)]);

    // "v/y/z" is published while nobody matches it (not cached); filters added later
    // — a multi-level wildcard and an exact one — both get the next publish.
    publisher.publish("v/y/z", "5", false).await;
    let mut deep = connect(p, "deep").await;
    deep.subscribe("v/#").await;
    let mut deep_exact = connect(p, "deep-exact").await;
    deep_exact.subscribe("v/y/z").await;
    publisher.publish("v/y/z", "6", false).await;
    assert_eq!(deep.next(1).await, vec![m("v/y/z", "6", false)]);
    assert_eq!(deep_exact.next(1).await, vec![m("v/y/z", "6", false)]);

    // A client subscribed through two filters gets a publish once per filter, as
    // before the patch (rumqttd does not deduplicate overlapping subscriptions).
    let mut both = connect(p, "both").await;
    both.subscribe("w/q").await;
    both.subscribe("w/+").await;
    publisher.publish("w/q", "7", false).await;
    assert_eq!(
        both.next(2).await,
        vec![m("w/q", "7", false), m("w/q", "7", false)]
    );
    both.nothing_more().await;
    deep.nothing_more().await;
    plus.nothing_more().await;
    hash.nothing_more().await;
}

#[tokio::test]
async fn retained_messages_reach_exact_and_wildcard_filters() {
    let broker = start_broker();
    let p = broker.port;
    let publisher = connect(p, "pub").await;
    let mut sync = connect(p, "sync").await;
    sync.subscribe("sync").await;
    // The router handles one connection's publishes in order: once the marker arrives,
    // the retained messages published before it are stored.
    let mut synced = async |publisher: &Client, n: &str| {
        publisher.publish("sync", n, false).await;
        assert_eq!(sync.next(1).await[0].1, n);
    };
    publisher.publish("r/1", "one", true).await;
    publisher.publish("r/2", "two", true).await;
    publisher.publish("s/1", "three", true).await;
    synced(&publisher, "a").await;

    let mut exact = connect(p, "exact").await;
    exact.subscribe("r/1").await;
    assert_eq!(exact.next(1).await, vec![m("r/1", "one", true)]);
    exact.nothing_more().await;

    let mut missing = connect(p, "missing").await;
    missing.subscribe("r/3").await;
    missing.nothing_more().await;

    let mut plus = connect(p, "plus").await;
    plus.subscribe("r/+").await;
    assert_eq!(
        plus.next(2).await,
        vec![m("r/1", "one", true), m("r/2", "two", true)]
    );
    plus.nothing_more().await;

    // A replaced retained message is read in its new state by an exact filter; a
    // cleared one (empty payload) is not read at all.
    publisher.publish("s/1", "four", true).await;
    synced(&publisher, "b").await;
    let mut replaced = connect(p, "replaced").await;
    replaced.subscribe("s/1").await;
    assert_eq!(replaced.next(1).await, vec![m("s/1", "four", true)]);
    publisher.publish("s/1", "", true).await;
    synced(&publisher, "c").await;
    let mut cleared = connect(p, "cleared").await;
    cleared.subscribe("s/1").await;
    cleared.nothing_more().await;
    let mut cleared_wild = connect(p, "cleared-wild").await;
    cleared_wild.subscribe("s/#").await;
    cleared_wild.nothing_more().await;
}

/// Publishes `n` numbered messages on `topic`, then a marker on `sync` that `sync_rx`
/// waits for: the router handles one connection's publishes in order, so all `n` are in
/// the log once it arrives.
async fn publish_n(publisher: &Client, topic: &str, n: usize, sync: &mut Client, mark: &str) {
    for i in 0..n {
        publisher
            .publish(topic, &format!("{i:04}-{}", "x".repeat(60)), false)
            .await;
    }
    publisher.publish("sync", mark, false).await;
    assert_eq!(sync.next(1).await[0].1, mark);
}

/// `n` numbered messages on `topic`, in order.
fn numbered(topic: &str, n: usize) -> Vec<(String, String, bool)> {
    (0..n)
        .map(|i| m(topic, &format!("{i:04}-{}", "x".repeat(60)), false))
        .collect()
}

/// Small segments (2 KiB, ~6 entries), so that the messages below fill dozens.
const SMALL_SEGMENTS: [&str; 2] = ["2048", "200"];

#[tokio::test]
async fn a_persistent_session_gets_what_it_missed_while_clean_readers_came_and_went() {
    let broker = start_broker_with(&SMALL_SEGMENTS);
    let p = broker.port;
    let publisher = connect(p, "pub").await;
    let mut sync = connect(p, "sync").await;
    sync.subscribe("sync").await;
    let mut away = connect_with(p, "away", false).await;
    away.subscribe("t/p").await;
    away.disconnect().await;
    // A clean reader reads everything and leaves: the log's readers have passed all of
    // it, and then it has no subscriber at all. Neither may free what the persistent
    // session has not had.
    let mut clean = connect(p, "clean").await;
    clean.subscribe("t/p").await;
    publish_n(&publisher, "t/p", 150, &mut sync, "a").await;
    let mut got = clean.next(150).await;
    got.sort();
    assert_eq!(got, numbered("t/p", 150));
    clean.disconnect().await;
    let mut back = connect_with(p, "away", false).await;
    assert_eq!(back.next(150).await, numbered("t/p", 150));
    back.nothing_more().await;
}

#[tokio::test]
async fn a_shared_subscription_keeps_its_log_when_the_plain_subscribers_leave() {
    let broker = start_broker_with(&SMALL_SEGMENTS);
    let p = broker.port;
    let publisher = connect(p, "pub").await;
    let mut sync = connect(p, "sync").await;
    sync.subscribe("sync").await;
    // The group's only member acknowledges nothing for now: once its 100 in-flight
    // slots are used, its request waits in its tracker, not among the filter's waiters.
    let mut o = MqttOptions::new("member", "127.0.0.1", p);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_manual_acks(true);
    let (member, mut ev) = AsyncClient::new(o, 256);
    let (tx, mut held) = mpsc::unbounded_channel();
    let (stx, mut subacks) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            match e {
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send(p);
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = stx.send(());
                }
                _ => {}
            }
        }
    });
    member
        .subscribe("$share/g/t/s", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    tokio::time::timeout(Duration::from_secs(5), subacks.recv())
        .await
        .expect("SUBACK within 5 s");
    let mut plain = connect(p, "plain").await;
    plain.subscribe("t/s").await;
    publish_n(&publisher, "t/s", 150, &mut sync, "a").await;
    assert_eq!(plain.next(150).await, numbered("t/s", 150));
    // The plain subscriber was the only one of "t/s" itself: once it leaves, the
    // filter has no subscriber by that name, but the group still reads its log.
    plain.unsubscribe("t/s").await;
    plain.disconnect().await;
    publish_n(&publisher, "t/s", 50, &mut sync, "b").await;
    let want = [numbered("t/s", 150), numbered("t/s", 50)].concat();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let p = tokio::time::timeout(Duration::from_secs(5), held.recv())
            .await
            .unwrap_or_else(|_| panic!("the group got {} of {}", got.len(), want.len()))
            .expect("event loop alive");
        got.push(m(&p.topic, &String::from_utf8_lossy(&p.payload), p.retain));
        member.ack(&p).await.expect("queue PUBACK");
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_freed_filter_and_the_filter_that_takes_its_place_stay_apart() {
    let broker = start_broker_with(&SMALL_SEGMENTS);
    let p = broker.port;
    let publisher = connect(p, "pub").await;
    let mut sync = connect(p, "sync").await;
    sync.subscribe("sync").await;
    let mut a = connect(p, "a").await;
    a.subscribe("t/a").await;
    let mut b = connect(p, "b").await;
    b.subscribe("t/b").await;
    publish_n(&publisher, "t/a", 40, &mut sync, "1").await;
    assert_eq!(a.next(40).await, numbered("t/a", 40));
    // "t/a" loses its only subscriber (its log is freed); "t/c" is new and may get the
    // freed slot.
    a.unsubscribe("t/a").await;
    let mut c = connect(p, "c").await;
    c.subscribe("t/c").await;
    publish_n(&publisher, "t/a", 5, &mut sync, "2").await;
    publish_n(&publisher, "t/c", 30, &mut sync, "3").await;
    publish_n(&publisher, "t/b", 30, &mut sync, "4").await;
    assert_eq!(c.next(30).await, numbered("t/c", 30));
    assert_eq!(b.next(30).await, numbered("t/b", 30));
    a.nothing_more().await;
    // Subscribed again, "t/a" starts afresh: new messages only, each once.
    a.subscribe("t/a").await;
    publish_n(&publisher, "t/a", 20, &mut sync, "5").await;
    assert_eq!(a.next(20).await, numbered("t/a", 20));
    a.nothing_more().await;
    b.nothing_more().await;
    c.nothing_more().await;
}
