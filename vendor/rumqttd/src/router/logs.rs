use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
        }
    }
}

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    fn size(&self) -> usize {
        let publish = &self.publish;
        // mqim patch: the entry itself counts too (it was `4 + topic + payload`), so that
        // `max_segment_size` bounds the memory a segment holds: an entry with an empty
        // payload (every client publish mqim sinks) was counted as 13 bytes but holds
        // over 200.
        std::mem::size_of::<PublishData>() + publish.topic.len() + publish.payload.len()
    }
}

/// mqim patch: what the router's logs hold, for the embedding program to report. Written
/// by the router thread only; read from anywhere.
#[derive(Debug, Default)]
pub struct LogStats {
    bytes: AtomicU64,
    filters: AtomicU64,
    saved_sessions: AtomicU64,
}

impl LogStats {
    /// The `Storage::size` of every entry in every filter's log (entries, topics and
    /// payloads; a payload shared by several filters counts once per filter).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Filters that have a log.
    pub fn filters(&self) -> u64 {
        self.filters.load(Ordering::Relaxed)
    }

    /// Sessions kept for clients that are gone (persistent sessions).
    pub fn saved_sessions(&self) -> u64 {
        self.saved_sessions.load(Ordering::Relaxed)
    }

    fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_bytes(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn set_saved_sessions(&self, n: usize) {
        self.saved_sessions.store(n as u64, Ordering::Relaxed);
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    /// mqim patch: the filters with a wildcard (`+`, `#`). A filter without one matches
    /// only the identical topic, found in `filter_indexes` by a hash lookup, so topic
    /// matching scans only these instead of every filter.
    wildcard_filters: Vec<(Filter, FilterIdx)>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
    /// mqim patch: what the logs hold, shared with the embedding program.
    pub stats: Arc<LogStats>,
    /// mqim patch: filters whose log may have segments all its readers passed: it
    /// started a new segment, or a reader caught up while it had more than one
    /// (`Router::trim_logs`). Each is listed once (`Data::trim_pending`).
    trim_candidates: Vec<FilterIdx>,
}

/// mqim patch: whether a filter (or a topic, which must not have one) has a wildcard.
fn has_wildcard(s: &str) -> bool {
    s.contains(['+', '#'])
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let mut wildcard_filters = Vec::new();
        let retained_publishes = HashMap::new();
        let publish_filters = HashMap::new();

        let stats = Arc::new(LogStats::default());
        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config, &stats);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                if has_wildcard(&filter) {
                    wildcard_filters.push((filter.clone(), idx));
                }
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            wildcard_filters,
            retained_publishes,
            stats,
            trim_candidates: Vec::new(),
        })
    }

    /// mqim patch: lists `idx` for `Router::trim_logs` if its log has segments
    /// before the active one and it is not listed yet.
    pub fn trim_candidate(&mut self, idx: FilterIdx) {
        if let Some(data) = self.native.get_mut(idx) {
            if !data.pinned && !data.trim_pending && data.log.memory_segments_count() > 1 {
                data.trim_pending = true;
                self.trim_candidates.push(idx);
            }
        }
    }

    /// mqim patch: whether any filter is listed by `trim_candidate`.
    pub fn has_trim_candidates(&self) -> bool {
        !self.trim_candidates.is_empty()
    }

    /// mqim patch: the filters listed by `trim_candidate` since the last call, each
    /// unlisted again.
    pub fn take_trim_candidates(&mut self) -> Vec<FilterIdx> {
        let taken = std::mem::take(&mut self.trim_candidates);
        for &idx in &taken {
            if let Some(data) = self.native.get_mut(idx) {
                data.trim_pending = false;
            }
        }
        taken
    }

    /// mqim patch: drops the segments of `idx`'s log that end at or before `min_next`
    /// (see `CommitLog::trim_before`).
    pub fn trim(&mut self, idx: FilterIdx, min_next: u64) {
        if let Some(data) = self.native.get_mut(idx) {
            let freed = data.log.trim_before(min_next);
            self.stats.sub_bytes(freed);
        }
    }

    /// mqim patch: marks the log of `idx` as read by someone whose position the router
    /// keeps outside the filter's waiters and its subscribers' trackers (a persistent
    /// session, which keeps its position in the graveyard, or a shared-subscription
    /// group, which keeps one for the group). Such a log is never trimmed by its readers'
    /// positions nor released, so rumqttd's behaviour for them is unchanged.
    pub fn pin(&mut self, idx: FilterIdx) {
        if let Some(data) = self.native.get_mut(idx) {
            data.pinned = true;
        }
    }

    /// mqim patch: the filter's last subscriber left. A log nobody reads is freed: a
    /// filter without a wildcard is forgotten altogether (its log, its index entry and
    /// its topic's cached match), a wildcard filter keeps its place (and its cached
    /// matches) with an empty log. A pinned log (`pin`) stays as it is. A later
    /// subscriber starts at the end of the log in either case, so nothing it could have
    /// received is lost.
    pub fn release(&mut self, filter: &str) {
        let Some(&idx) = self.filter_indexes.get(filter) else {
            return;
        };
        let Some(data) = self.native.get_mut(idx) else {
            return;
        };
        if data.pinned || !data.waiters.waiters().is_empty() {
            return;
        }
        if has_wildcard(filter) {
            let freed = data.log.clear();
            self.stats.sub_bytes(freed);
            return;
        }
        self.stats.sub_bytes(data.log.bytes());
        self.stats.filters.fetch_sub(1, Ordering::Relaxed);
        self.native.remove(idx);
        self.filter_indexes.remove(filter);
        if let Some(filters) = self.publish_filters.get_mut(filter) {
            filters.retain(|&i| i != idx);
            if filters.is_empty() {
                self.publish_filters.remove(filter);
            }
        }
    }

    /// mqim patch: `clean` for the given filters only (those the connection subscribed
    /// to, the only ones it can wait on), instead of every filter's waiters.
    pub fn clean_filters<'a>(
        &mut self,
        id: ConnectionId,
        filters: impl Iterator<Item = &'a Filter>,
    ) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for filter in filters {
            let Some(&idx) = self.filter_indexes.get(filter) else {
                continue;
            };
            if let Some(data) = self.native.get_mut(idx) {
                inflight.append(&mut data.waiters.remove(id));
            }
        }
        inflight
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(filter)?)
            .unwrap();
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|&(conn_id, _)| conn_id == id)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                // mqim patch: the filter equal to the topic (a hash lookup) and the
                // wildcard filters, instead of every filter. A topic with a wildcard
                // character (not a valid topic name) is matched against every filter,
                // as before.
                let v: Vec<usize> = if has_wildcard(topic) {
                    self.filter_indexes
                        .iter()
                        .filter(|(filter, _)| matches(topic, filter))
                        .map(|(_, filter_idx)| *filter_idx)
                        .collect()
                } else {
                    let exact = self
                        .filter_indexes
                        .get(topic)
                        .filter(|_| matches(topic, topic))
                        .copied();
                    exact
                        .into_iter()
                        .chain(
                            self.wildcard_filters
                                .iter()
                                .filter(|(filter, _)| matches(topic, filter))
                                .map(|(_, filter_idx)| *filter_idx),
                        )
                        .collect()
                };

                if !v.is_empty() {
                    self.publish_filters.insert(topic.to_owned(), v.clone());
                }

                Some(v)
            }
        }
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config, &self.stats);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);

                // Match new filter to existing topics and add to publish_filters if it matches
                // (mqim patch: a filter without a wildcard can only match the identical
                // topic, so only a wildcard filter scans every known topic).
                if has_wildcard(filter) {
                    self.wildcard_filters.push((filter.to_owned(), idx));
                    for (topic, filters) in publish_filters.iter_mut() {
                        if matches(topic, filter) {
                            filters.push(idx);
                        }
                    }
                } else if let Some(filters) = publish_filters.get_mut(filter) {
                    // Cached topics all matched something, so none starts with `$`.
                    filters.push(idx);
                }

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get(filter_idx).unwrap();
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let idx = request.filter_idx;
        let data = self.native.get_mut(idx).unwrap();
        data.waiters.register(id, request);
        // mqim patch: a reader caught up; what it read may be all that kept a segment.
        self.trim_candidate(idx);
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // discard expired retained messages
        self.retained_publishes.retain(|_, pubdata| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.clone()))
            .collect()
    }

    /// mqim patch: `read_retained_messages` for any filter, in O(1) for a filter without
    /// a wildcard: that filter can only match the retained message of the identical
    /// topic, so the expiry check and the match look at that one entry instead of every
    /// retained message the broker holds (which made each SUBSCRIBE cost O(retained
    /// topics) on the router thread).
    pub fn read_retained(&mut self, filter: &str) -> Vec<PubWithProp> {
        if has_wildcard(filter) {
            return self.read_retained_messages(filter);
        }
        let now = Instant::now();
        let Some(pubdata) = self.retained_publishes.get_mut(filter) else {
            return Vec::new();
        };
        if let Some(interval) = pubdata
            .properties
            .as_mut()
            .and_then(|p| p.message_expiry_interval.as_mut())
        {
            let time_spent = (now - pubdata.timestamp).as_secs() as u32;
            if time_spent >= *interval {
                self.retained_publishes.remove(filter);
                return Vec::new();
            }
            *interval -= time_spent;
        }
        if !matches(filter, filter) {
            return Vec::new();
        }
        vec![(pubdata.publish.clone(), pubdata.properties.clone())]
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// mqim patch: see `DataLog::pin`.
    pub pinned: bool,
    /// mqim patch: listed in `DataLog::trim_candidates`.
    trim_pending: bool,
    /// mqim patch: see `DataLog::stats`.
    stats: Arc<LogStats>,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig, stats: &Arc<LogStats>) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        stats.filters.fetch_add(1, Ordering::Relaxed);
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            pinned: false,
            trim_pending: false,
            stats: stats.clone(),
        }
    }

    /// mqim patch: the filter this log is for.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let before = self.log.bytes();
        let offset = self.log.append(item);
        // mqim patch: the append may also have dropped the oldest segment.
        let after = self.log.bytes();
        if after >= before {
            self.stats.add_bytes(after - before);
        } else {
            self.stats.sub_bytes(before - after);
        }
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        // mqim patch: was 100 entries each (23,200 + 21,600 bytes per connection, its
        // first pages resident on every idle connection); both grow on demand.
        // `recorded` only ever holds QoS 2 publishes.
        AckLog {
            committed: VecDeque::with_capacity(4),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
