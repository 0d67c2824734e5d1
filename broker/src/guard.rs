//! `Guard`: a wrapper around rumqttd's MQTT 3.1.1 codec that enforces mqim's rules.
//!
//! rumqttd 0.20 has no authorization hook, but its servers are generic over the public
//! `Protocol` trait and clone one protocol value per connection. The guard is that
//! value: it sees every packet read from and written to one client, so it can
//!
//! * validate the client id and bind the connection to its user (CONNECT);
//! * rewrite the client id to one unique per connection and force a clean session,
//!   which makes rumqttd's listener lock-out (bug 2) impossible and keeps no broker
//!   session state (the database is the source of truth for delivery);
//! * drop last-will messages (they would be published on any topic, past the rules);
//! * judge each SUBSCRIBE filter on its own, remove refused ones before the router sees
//!   them (a `$` filter would make the router disconnect the client) and answer them with
//!   SUBACK 0x80;
//! * take frames published on the user's own `out` topic for the service and send every
//!   client publish to a sink topic nobody can subscribe to, so clients never reach each
//!   other directly;
//! * check each outgoing PUBLISH again at delivery (a kicked member's old subscription
//!   gets nothing), acknowledging dropped QoS 1 publishes to the router itself, in the
//!   strict order rumqttd requires;
//! * strip MQTT 5 properties from packets written to 3.1.1 clients (bug 1);
//! * report PUBACKs of delivered frames, and the end of the connection when dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnectReturnCode, Error, Packet, Protocol, PubAck, PubAckReason, QoS, SubscribeReasonCode,
};
use tracing::debug;

use crate::clientid::valid_client_id;
use crate::hooks::{Denied, Hooks};
use crate::registry::{Connection, Registry};
use crate::topics::{may_publish, may_receive, may_subscribe, AccessGraph, Fmt, Grant};

/// Topic every client publish is rewritten to. Subscribing to it is refused like any
/// other topic outside the rules, so nothing published there is ever delivered.
pub const SINK_TOPIC: &str = "mqim/sink";

/// State shared by every connection of the broker.
pub(crate) struct Shared {
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) registry: Arc<Registry>,
    /// Set once the broker runs; used to close an older connection of the same
    /// client id (session takeover, which rumqttd no longer does for us because
    /// every connection has its own internal id).
    pub(crate) closer: std::sync::OnceLock<crate::embedded::Closer>,
}

/// Prefix of the per-device topics: `mqim/d/{uid}/{client_id}/{fmt}`. A device that
/// subscribes to its inbox is also subscribed, invisibly, to its device topic, so the
/// service can send one device its backlog without sending it to the user's other
/// devices. The guard rewrites these publishes to the inbox topic on the way out.
pub const DEVICE_TOPIC_PREFIX: &str = "mqim/d/";

/// The most room an empty queue of unacknowledged deliveries keeps.
const KEPT_INFLIGHT: usize = 16;

/// The device topic of `client_id` of user `uid` in format `fmt`.
pub fn device_topic(uid: i64, client_id: &str, fmt: crate::topics::Fmt) -> String {
    format!("{DEVICE_TOPIC_PREFIX}{uid}/{client_id}/{}", fmt.leaf())
}

/// Ends the connection's registration when the connection task drops its codec.
struct Live {
    conn: Arc<Connection>,
    shared: Arc<Shared>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.registry.remove(self.conn.id);
        if self.conn.set_online(false) {
            self.shared.hooks.disconnected(&self.conn);
        }
    }
}

/// An outgoing QoS 1 publish waiting for its PUBACK.
enum Inflight {
    /// Written to the client, who will acknowledge it. `topic` is the one the broker
    /// routed it on (a device topic, not the inbox topic the client saw it on).
    Written { topic: Bytes, payload: Bytes },
    /// Dropped by the delivery check: the guard acknowledges it itself.
    Dropped,
    /// The copy of a message this connection sent ([`Connection::expect_own_copy`]): not
    /// written; acknowledged by the guard and reported as delivered once everything
    /// written before it has been acknowledged, as if the client had acknowledged it.
    Own { topic: Bytes, payload: Bytes },
}

#[derive(Default)]
struct State {
    /// Packets to hand to the router before reading more from the socket (synthetic
    /// PUBACKs, in order).
    pending: VecDeque<Packet>,
    /// Outgoing QoS 1 publishes in the order written; rumqttd accepts acks only in order.
    inflight: VecDeque<(u16, Inflight)>,
    /// Per SUBSCRIBE packet id: what to tell the client and the service when its
    /// SUBACK comes back.
    subscribes: HashMap<u16, PendingSub>,
    /// The delivery check's last answer (see [`may_receive_cached`]).
    verdict: Option<Verdict>,
}

/// Whether this connection's user may receive on `topic`, as of graph `version`.
struct Verdict {
    topic: Bytes,
    version: u64,
    allowed: bool,
}

/// [`may_receive`], reusing the last answer for the same topic while the graph reports
/// no change ([`AccessGraph::version`]). A broadcast writes the same group topic to each
/// member's connection message after message; without this each delivery parsed the
/// topic and looked the membership up under the graph's lock again.
fn may_receive_cached(
    last: &mut Option<Verdict>,
    uid: i64,
    topic: &Bytes,
    graph: &dyn AccessGraph,
) -> bool {
    // Read before the lookup: a change racing with it raises the version after, so the
    // answer is at worst re-checked once more.
    let version = graph.version();
    if let (Some(v), Some(l)) = (version, last.as_ref()) {
        if l.version == v && l.topic == *topic {
            return l.allowed;
        }
    }
    let allowed = may_receive(uid, std::str::from_utf8(topic).unwrap_or(""), graph);
    *last = version.map(|version| Verdict {
        topic: topic.clone(),
        version,
        allowed,
    });
    allowed
}

struct PendingSub {
    /// Number of filters the client sent.
    total: usize,
    /// Positions refused by the rules.
    refused: Vec<usize>,
    /// Grants of the accepted filters, with their QoS.
    grants: Vec<(Grant, u8)>,
    /// Hidden device-topic filters appended after the client's (their codes are
    /// removed from the SUBACK).
    hidden: usize,
}

/// The per-connection protocol wrapper (see the module docs).
pub struct Guard {
    shared: Arc<Shared>,
    /// The socket's peer, learnt when rumqttd cloned this codec for it.
    peer: Option<std::net::SocketAddr>,
    /// The connection's number, taken when rumqttd cloned this codec for its socket
    /// (accept order; see [`Registry::next_number`]). 0 in the template.
    number: u64,
    live: Option<Live>,
    state: Mutex<State>,
}

impl Clone for Guard {
    /// Servers clone the template once per accepted socket; the template never has a
    /// connection, so a clone starts fresh.
    fn clone(&self) -> Self {
        let mut g = Guard::new(self.shared.clone());
        g.peer = crate::peer::take_accepted();
        g.number = self.shared.registry.next_number();
        g
    }
}

impl Guard {
    pub(crate) fn new(shared: Arc<Shared>) -> Guard {
        Guard {
            shared,
            peer: None,
            number: 0,
            live: None,
            state: Mutex::new(State::default()),
        }
    }

    fn conn(&self) -> Option<&Arc<Connection>> {
        self.live.as_ref().map(|l| &l.conn)
    }

    fn on_connect(&mut self, packet: Packet) -> Result<Packet, Error> {
        let Packet::Connect(mut connect, props, _will, _will_props, login) = packet else {
            return Ok(packet);
        };
        if self.live.is_some() {
            // A second CONNECT is a protocol violation.
            return Err(Error::InvalidProtocol);
        }
        let Some(login) = login else {
            debug!("CONNECT without credentials refused");
            return Err(Error::IncorrectPacketFormat);
        };
        if !valid_client_id(&connect.client_id, &login.username) {
            debug!(
                client_id_len = connect.client_id.len(),
                "CONNECT with a client id not allowed for its username refused"
            );
            return Err(Error::IncorrectPacketFormat);
        }
        let peer = self.peer.map(crate::peer::resolve);
        let conn =
            self.shared
                .registry
                .insert(self.number, &connect.client_id, &login.username, peer);
        let login = Some(login);
        connect.client_id = conn.internal_id.clone();
        connect.clean_session = true;
        self.live = Some(Live {
            conn,
            shared: self.shared.clone(),
        });
        // Last wills are dropped: the router would publish them on any topic.
        Ok(Packet::Connect(connect, props, None, None, login))
    }

    fn on_publish(&mut self, packet: Packet) -> Packet {
        let Packet::Publish(mut publish, _props) = packet else {
            return packet;
        };
        if let Some(conn) = self.conn() {
            let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
            match conn.user_id().and_then(|uid| may_publish(uid, topic)) {
                Some(fmt) => self.shared.hooks.frame(conn, fmt, publish.payload.clone()),
                None => {
                    debug!(conn = conn.id, topic, "publish outside the rules dropped");
                    self.shared.hooks.denied(conn, Denied::Publish(topic));
                }
            }
        }
        // The router still sees the publish (it owes a QoS 1 client its PUBACK) but on a
        // topic with no subscribers, where it is dropped.
        publish.topic = Bytes::from_static(SINK_TOPIC.as_bytes());
        publish.retain = false;
        publish.payload = Bytes::new();
        Packet::Publish(publish, None)
    }

    fn on_subscribe(&mut self, packet: Packet) -> Packet {
        let Packet::Subscribe(mut subscribe, props) = packet else {
            return packet;
        };
        let total = subscribe.filters.len();
        let mut refused = Vec::new();
        let mut grants = Vec::new();
        let mut kept = Vec::with_capacity(total);
        let mut hidden = Vec::new();
        let user = self.conn().and_then(|c| c.user_id());
        for (i, mut filter) in subscribe.filters.drain(..).enumerate() {
            let grant =
                user.and_then(|u| may_subscribe(u, &filter.path, self.shared.hooks.graph()));
            match grant {
                Some(g) => {
                    // QoS 2 is granted as QoS 1: mqim deduplicates by message id.
                    if filter.qos == QoS::ExactlyOnce {
                        filter.qos = QoS::AtLeastOnce;
                    }
                    if let (Grant::Inbox { uid, fmt }, Some(conn)) = (g, self.conn()) {
                        let mut h = filter.clone();
                        h.path = device_topic(uid, &conn.client_id, fmt.unwrap_or(Fmt::Json));
                        if !hidden
                            .iter()
                            .any(|x: &rumqttd::protocol::Filter| x.path == h.path)
                        {
                            hidden.push(h);
                        }
                    }
                    grants.push((g, filter.qos as u8));
                    kept.push(filter);
                }
                None => {
                    if let Some(conn) = self.conn() {
                        debug!(conn = conn.id, filter = %filter.path, "subscription refused");
                        self.shared
                            .hooks
                            .denied(conn, Denied::Subscribe(&filter.path));
                    }
                    refused.push(i);
                }
            }
        }
        let n_hidden = hidden.len();
        kept.extend(hidden);
        subscribe.filters = kept;
        self.state.get_mut().subscribes.insert(
            subscribe.pkid,
            PendingSub {
                total,
                refused,
                grants,
                hidden: n_hidden,
            },
        );
        Packet::Subscribe(subscribe, props)
    }

    fn on_puback(&mut self, pkid: u16) {
        let state = self.state.get_mut();
        if let Some((head, _)) = state.inflight.front() {
            if *head == pkid {
                if let Some((_, Inflight::Written { topic, payload })) = state.inflight.pop_front()
                {
                    if let Some(live) = &self.live {
                        self.shared.hooks.delivered(&live.conn, &topic, &payload);
                    }
                }
            }
        }
        Self::ack_dropped(&self.shared, self.live.as_ref(), state);
        // A burst fills the queue to the broker's inflight limit (100); once all is
        // acknowledged, give that room back rather than keep it for the connection's
        // lifetime (test `a_group_burst_leaves_no_grown_buffers_behind`).
        if state.inflight.is_empty() {
            state.inflight.shrink_to(KEPT_INFLIGHT);
        }
    }

    /// Acknowledges, on the client's behalf, publishes the guard did not write that are
    /// now at the head of the inflight queue; own copies count as delivered.
    fn ack_dropped(shared: &Shared, live: Option<&Live>, state: &mut State) {
        while let Some((pkid, entry)) = state.inflight.front() {
            let pkid = *pkid;
            if matches!(entry, Inflight::Written { .. }) {
                break;
            }
            if let Some((_, Inflight::Own { topic, payload })) = state.inflight.pop_front() {
                if let Some(live) = live {
                    shared.hooks.delivered(&live.conn, &topic, &payload);
                }
            }
            state.pending.push_back(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ));
        }
    }

    fn write_publish(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, Error> {
        let Packet::Publish(mut publish, _props) = packet else {
            return V4.write(packet, out);
        };
        // Device-topic publishes go out on the inbox topic, to their own device only.
        let mut device_ok = None;
        let mut routed = None;
        if publish.topic.starts_with(DEVICE_TOPIC_PREFIX.as_bytes()) {
            routed = Some(publish.topic.clone());
            let inbox = self.conn().and_then(|c| device_to_inbox(c, &publish.topic));
            device_ok = Some(inbox.is_some());
            if let Some(t) = inbox {
                publish.topic = Bytes::from(t);
            }
        }
        let start = out.len();
        let topic = publish.topic.clone();
        let payload = publish.payload.clone();
        // Properties are stripped: a v5 publish with properties would hit `unreachable!`
        // in rumqttd's v4 writer (bug 1).
        let n = V4.write(Packet::Publish(publish, None), out)?;
        let (qos, pkid) = publish_header(&out[start..]).unwrap_or((0, 0));
        let mut state = self.state.lock();
        let allowed = match self.conn() {
            Some(conn) => match conn.user_id() {
                Some(uid) => {
                    let ok = device_ok.unwrap_or_else(|| {
                        may_receive_cached(
                            &mut state.verdict,
                            uid,
                            &topic,
                            self.shared.hooks.graph(),
                        )
                    });
                    if !ok {
                        let t = std::str::from_utf8(&topic).unwrap_or("");
                        debug!(
                            conn = conn.id,
                            topic = t,
                            "delivery no longer allowed, dropped"
                        );
                        self.shared.hooks.denied(conn, Denied::Delivery(t));
                    }
                    ok
                }
                None => false,
            },
            None => false,
        };
        // The sending device already has its own message (and gets its ack).
        let own = allowed && self.conn().is_some_and(|c| c.take_own_copy(&payload));
        let allowed = allowed && !own;
        if qos > 0 {
            let entry = if own {
                Inflight::Own { topic, payload }
            } else if allowed {
                Inflight::Written {
                    topic: routed.unwrap_or(topic),
                    payload,
                }
            } else {
                Inflight::Dropped
            };
            state.inflight.push_back((pkid, entry));
            Self::ack_dropped(&self.shared, self.live.as_ref(), &mut state);
        }
        if allowed {
            Ok(n)
        } else {
            out.truncate(start);
            Ok(0)
        }
    }

    fn write_suback(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, Error> {
        let Packet::SubAck(mut suback, _props) = packet else {
            return V4.write(packet, out);
        };
        let entry = self.state.lock().subscribes.remove(&suback.pkid);
        let mut grants = Vec::new();
        if let Some(PendingSub {
            total,
            refused,
            grants: g,
            hidden,
        }) = entry
        {
            let visible = suback.return_codes.len().saturating_sub(hidden);
            suback.return_codes.truncate(visible);
            let mut accepted = suback.return_codes.into_iter();
            let mut codes = Vec::with_capacity(total);
            for i in 0..total {
                if refused.contains(&i) {
                    codes.push(SubscribeReasonCode::Failure);
                } else {
                    codes.push(accepted.next().unwrap_or(SubscribeReasonCode::Failure));
                }
            }
            suback.return_codes = codes;
            grants = g;
        }
        let n = V4.write(Packet::SubAck(suback, None), out)?;
        if let Some(conn) = self.conn() {
            for (g, qos) in grants {
                self.shared.hooks.subscribed(conn, g, qos);
            }
        }
        Ok(n)
    }
}

impl Protocol for Guard {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        if let Some(p) = self.state.get_mut().pending.pop_front() {
            return Ok(p);
        }
        let packet = V4.read_mut(stream, max_size)?;
        Ok(match packet {
            Packet::Connect(..) => self.on_connect(packet)?,
            Packet::Publish(..) => self.on_publish(packet),
            Packet::Subscribe(..) => self.on_subscribe(packet),
            Packet::PubAck(ref ack, _) => {
                let pkid = ack.pkid;
                self.on_puback(pkid);
                packet
            }
            other => other,
        })
    }

    fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, Error> {
        match packet {
            Packet::Publish(..) => self.write_publish(packet, out),
            Packet::SubAck(..) => self.write_suback(packet, out),
            Packet::ConnAck(ack, _) => {
                let success = ack.code == ConnectReturnCode::Success;
                let n = V4.write(Packet::ConnAck(ack, None), out)?;
                if success {
                    if let Some(conn) = self.conn() {
                        if !conn.set_online(true) {
                            if let Some(closer) = self.shared.closer.get() {
                                // The newest connection of a client id wins, whichever
                                // CONNACK is written first (an older CONNECT can finish
                                // its token check after a newer one). Newest means
                                // accepted last (the numbers follow accept order): a
                                // socket that sent CONNECT and hung up just before the
                                // device reconnected can have its CONNECT read after the
                                // reconnect's, and must not close it.
                                let mut same = self.shared.registry.with_client_id(&conn.client_id);
                                let newest = same.iter().map(|c| c.id).max().unwrap_or(conn.id);
                                same.retain(|c| c.id != newest);
                                closer.close(same);
                            }
                            self.shared.hooks.connected(conn);
                        }
                    }
                }
                Ok(n)
            }
            // Every other packet goes out without MQTT 5 properties (bug 1).
            Packet::PubAck(p, _) => V4.write(Packet::PubAck(p, None), out),
            Packet::UnsubAck(p, _) => V4.write(Packet::UnsubAck(p, None), out),
            Packet::Disconnect(p, _) => V4.write(Packet::Disconnect(p, None), out),
            Packet::PubRec(p, _) => V4.write(Packet::PubRec(p, None), out),
            Packet::PubRel(p, _) => V4.write(Packet::PubRel(p, None), out),
            Packet::PubComp(p, _) => V4.write(Packet::PubComp(p, None), out),
            other => V4.write(other, out),
        }
    }
}

/// The inbox topic a device-topic publish is for, if it is for this connection.
fn device_to_inbox(conn: &Connection, topic: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(topic)
        .ok()?
        .strip_prefix(DEVICE_TOPIC_PREFIX)?;
    let mut it = rest.split('/');
    let uid: i64 = it.next()?.parse().ok()?;
    let client = it.next()?;
    let leaf = it.next()?;
    let fmt = Fmt::from_leaf(leaf)?;
    if it.next().is_some() || conn.user_id() != Some(uid) || client != conn.client_id {
        return None;
    }
    Some(format!("im/u/{uid}/in/{}", fmt.leaf()))
}

/// Reads QoS and packet id from an encoded PUBLISH (`Publish` keeps them crate-private).
fn publish_header(buf: &[u8]) -> Option<(u8, u16)> {
    let qos = (buf.first()? >> 1) & 0b11;
    let mut i = 1;
    // Remaining length: 1 to 4 bytes, high bit = continuation.
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 || i > 4 {
            break;
        }
    }
    let topic_len = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]) as usize;
    i += 2 + topic_len;
    if qos == 0 {
        return Some((0, 0));
    }
    Some((qos, u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?])))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{BufMut, Bytes, BytesMut};
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{Packet, Protocol, Publish, PublishProperties};

    use super::{publish_header, Guard, Shared};
    use crate::hooks::{BoxFuture, Hooks};
    use crate::registry::{Principal, Registry};
    use crate::topics::AccessGraph;

    struct Graph;
    impl AccessGraph for Graph {
        fn is_member(&self, uid: i64, gid: i64) -> bool {
            uid == 1 && gid == 10
        }
        fn are_friends(&self, _: i64, _: i64) -> bool {
            false
        }
    }

    struct TestHooks;
    impl Hooks for TestHooks {
        fn authenticate(&self, _: &str, _: &str) -> BoxFuture<Option<Principal>> {
            Box::pin(async { None })
        }
        fn graph(&self) -> &dyn AccessGraph {
            &Graph
        }
    }

    /// Records the payloads reported delivered.
    #[derive(Default)]
    struct Recording(parking_lot::Mutex<Vec<Bytes>>);
    impl Hooks for Recording {
        fn authenticate(&self, _: &str, _: &str) -> BoxFuture<Option<Principal>> {
            Box::pin(async { None })
        }
        fn graph(&self) -> &dyn AccessGraph {
            &Graph
        }
        fn delivered(&self, _: &Arc<crate::Connection>, _: &Bytes, payload: &Bytes) {
            self.0.lock().push(payload.clone());
        }
    }

    /// A guard for a connection of user 1 ("alice"), as after a successful CONNECT.
    fn bound_guard() -> Guard {
        bound_guard_with(Arc::new(TestHooks))
    }

    fn bound_guard_with(hooks: Arc<dyn Hooks>) -> Guard {
        let shared = Arc::new(Shared {
            hooks,
            registry: Arc::new(Registry::default()),
            closer: std::sync::OnceLock::new(),
        });
        // rumqttd clones the template once per accepted socket.
        let mut g = Guard::new(shared).clone();
        let mut buf = BytesMut::new();
        // CONNECT alice/alice with a password.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 30];
        for s in ["alice", "alice", "token"] {
            body.put_u16(s.len() as u16);
            body.extend_from_slice(s.as_bytes());
        }
        buf.put_u8(0x10);
        buf.put_u8(body.len() as u8);
        buf.extend_from_slice(&body);
        let p = g.read_mut(&mut buf, 1 << 20).expect("connect");
        assert!(
            matches!(p, Packet::Connect(ref c, ..) if c.client_id.starts_with("alice~") && c.clean_session)
        );
        let conn = g.conn().expect("registered").clone();
        assert!(conn.bind(Principal {
            user_id: 1,
            username: "alice".into(),
            token_id: 1,
        }));
        g
    }

    /// The client acknowledges `pkid`; the first `n` PUBACKs the guard hands the router.
    fn client_acks(g: &mut Guard, pkid: u16, n: usize) -> Vec<u16> {
        let [hi, lo] = pkid.to_be_bytes();
        let mut inbuf = BytesMut::from(&[0x40u8, 2, hi, lo][..]);
        (0..n)
            .map(|_| match g.read_mut(&mut inbuf, 1 << 20).expect("ack") {
                Packet::PubAck(a, _) => a.pkid,
                p => panic!("unexpected {p:?}"),
            })
            .collect()
    }

    /// A QoS 1 publish as the router hands it to a connection.
    fn qos1(topic: &str, pkid: u16) -> Publish {
        let mut b = BytesMut::new();
        b.put_u8(0b0011_0010);
        b.put_u16(pkid);
        b.put_u16(topic.len() as u16);
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(b"{}");
        Publish::deserialize(b.freeze())
    }

    #[test]
    fn reads_publish_header() {
        // QoS 1, remaining length 9, topic "a/b", pkid 0x0102, payload "xy".
        let buf = [0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'x', b'y'];
        assert_eq!(publish_header(&buf), Some((1, 0x0102)));
        let buf = [0x30, 7, 0, 3, b'a', b'/', b'b', b'x', b'y'];
        assert_eq!(publish_header(&buf), Some((0, 0)));
        assert_eq!(publish_header(&[0x32]), None);
    }

    /// Regression (rumqttd bug 1): a publish carrying MQTT 5 properties written to a
    /// 3.1.1 client used to hit `unreachable!` and kill the connection.
    #[test]
    fn v5_properties_are_stripped_for_v4_clients() {
        let g = bound_guard();
        let mut out = BytesMut::new();
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let n = g
            .write(
                Packet::Publish(qos1("im/u/1/in/json", 7), Some(props)),
                &mut out,
            )
            .expect("written");
        assert!(n > 0);
        let mut back = out.clone();
        let p = V4.read_mut(&mut back, 1 << 20).expect("valid 3.1.1");
        assert!(
            matches!(p, Packet::Publish(ref p, None) if p.topic == Bytes::from_static(b"im/u/1/in/json"))
        );
    }

    /// Publishes the delivery check drops are acknowledged to the router by the guard,
    /// in order with the client's own PUBACKs (rumqttd disconnects on out-of-order acks).
    #[test]
    fn dropped_deliveries_are_acknowledged_in_order() {
        let mut g = bound_guard();
        let mut out = BytesMut::new();
        g.write(Packet::Publish(qos1("im/u/1/in/json", 1), None), &mut out)
            .expect("1");
        let before = out.len();
        // Group 11: user 1 is not a member (any more): not written.
        let n = g
            .write(Packet::Publish(qos1("im/g/11/in/json", 2), None), &mut out)
            .expect("2");
        assert_eq!(n, 0);
        assert_eq!(
            out.len(),
            before,
            "a dropped publish must not reach the client"
        );
        g.write(Packet::Publish(qos1("im/g/10/in/json", 3), None), &mut out)
            .expect("3");
        // The client acks 1: the guard returns 1, then its own ack for 2.
        assert_eq!(client_acks(&mut g, 1, 2), [1, 2]);
        // Nothing more until the client acks 3.
        assert!(g.read_mut(&mut BytesMut::new(), 1 << 20).is_err());
        assert_eq!(client_acks(&mut g, 3, 1), [3]);
    }

    /// A graph whose membership of user 1 in group 10 can be revoked, with a version.
    #[derive(Default)]
    struct Revocable {
        revoked: std::sync::atomic::AtomicBool,
        version: std::sync::atomic::AtomicU64,
        /// Whether to report a version at all.
        versioned: bool,
        lookups: std::sync::atomic::AtomicUsize,
    }
    impl Revocable {
        fn revoke(&self, bump: bool) {
            self.revoked
                .store(true, std::sync::atomic::Ordering::SeqCst);
            if bump {
                self.version
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    impl AccessGraph for Revocable {
        fn is_member(&self, uid: i64, gid: i64) -> bool {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            uid == 1 && gid == 10 && !self.revoked.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn are_friends(&self, _: i64, _: i64) -> bool {
            false
        }
        fn version(&self) -> Option<u64> {
            self.versioned
                .then(|| self.version.load(std::sync::atomic::Ordering::SeqCst))
        }
    }
    struct RevocableHooks(Arc<Revocable>);
    impl Hooks for RevocableHooks {
        fn authenticate(&self, _: &str, _: &str) -> BoxFuture<Option<Principal>> {
            Box::pin(async { None })
        }
        fn graph(&self) -> &dyn AccessGraph {
            self.0.as_ref()
        }
    }

    /// The delivery check reuses its answer for the same topic only while the graph's
    /// version stays the same: a membership revoked (and the version raised) stops the
    /// very next delivery, and a graph without versions is asked every time.
    #[test]
    fn delivery_check_reuses_its_answer_only_until_the_graph_changes() {
        let written = |g: &Guard, pkid: u16, topic: &str| {
            let mut out = BytesMut::new();
            g.write(Packet::Publish(qos1(topic, pkid), None), &mut out)
                .expect("write")
                > 0
        };
        let graph = Arc::new(Revocable {
            versioned: true,
            ..Default::default()
        });
        let g = bound_guard_with(Arc::new(RevocableHooks(graph.clone())));
        assert!(written(&g, 1, "im/g/10/in/json"));
        assert!(written(&g, 2, "im/g/10/in/json"));
        assert_eq!(graph.lookups.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Another topic is checked on its own.
        assert!(!written(&g, 3, "im/g/11/in/json"));
        assert!(written(&g, 4, "im/g/10/in/json"));
        assert_eq!(graph.lookups.load(std::sync::atomic::Ordering::SeqCst), 3);
        graph.revoke(true);
        assert!(
            !written(&g, 5, "im/g/10/in/json"),
            "revoked: dropped at once"
        );

        let graph = Arc::new(Revocable::default());
        let g = bound_guard_with(Arc::new(RevocableHooks(graph.clone())));
        assert!(written(&g, 1, "im/g/10/in/json"));
        graph.revoke(false);
        assert!(
            !written(&g, 2, "im/g/10/in/json"),
            "no version: asked again"
        );
        assert_eq!(graph.lookups.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// The copy of a message the connection sent itself is not written to it, is
    /// acknowledged to the router in order, and counts as delivered only once what was
    /// written before it has been acknowledged (so the device's cursor never passes a
    /// message it may not have).
    #[test]
    fn own_copies_are_not_written_and_count_as_delivered_in_order() {
        let rec = Arc::new(Recording::default());
        let g = bound_guard_with(rec.clone());
        let conn = g.conn().expect("bound").clone();
        let p1 = qos1("im/u/1/in/json", 1);
        let p2 = qos1("im/u/1/in/json", 2);
        let (b1, b2) = (p1.payload.clone(), p2.payload.clone());
        // Same bytes in another buffer: someone else's copy, written.
        let other = qos1("im/u/1/in/json", 3);
        conn.expect_own_copy(b2.clone());
        let mut out = BytesMut::new();
        assert!(g.write(Packet::Publish(p1, None), &mut out).expect("1") > 0);
        let before = out.len();
        assert_eq!(g.write(Packet::Publish(p2, None), &mut out).expect("2"), 0);
        assert_eq!(out.len(), before, "an own copy must not reach its sender");
        assert!(g.write(Packet::Publish(other, None), &mut out).expect("3") > 0);
        assert!(rec.0.lock().is_empty(), "nothing acknowledged yet");
        let mut g = g;
        // The client acks 1: the guard returns 1, then its own ack for 2.
        assert_eq!(client_acks(&mut g, 1, 2), [1, 2]);
        let seen: Vec<*const u8> = rec.0.lock().iter().map(|b| b.as_ptr()).collect();
        assert_eq!(seen, [b1.as_ptr(), b2.as_ptr()]);
        // Asked once: the same buffer again is written.
        let p4 = qos1("im/u/1/in/json", 4);
        let b4 = p4.payload.clone();
        conn.expect_own_copy(b4.clone());
        assert!(conn.take_own_copy(&b4));
        assert!(g.write(Packet::Publish(p4, None), &mut out).expect("4") > 0);
    }

    /// Client publishes never reach the router on their own topic.
    #[test]
    fn client_publishes_go_to_the_sink() {
        let mut g = bound_guard();
        for topic in ["im/u/1/out/json", "im/u/2/in/json", "im/g/10/in/json"] {
            let mut out = BytesMut::new();
            V4.write(Packet::Publish(qos1(topic, 9), None), &mut out)
                .expect("encode");
            match g.read_mut(&mut out, 1 << 20).expect("publish") {
                Packet::Publish(p, None) => {
                    assert_eq!(p.topic, Bytes::from_static(super::SINK_TOPIC.as_bytes()))
                }
                p => panic!("unexpected {p:?}"),
            }
        }
    }
}
