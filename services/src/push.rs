//! Publishing server frames to users and groups, in every format.
//!
//! A frame goes to `…/in/json` and `…/in/pb`; the broker drops a publish nobody is
//! subscribed to at almost no cost, so each subscriber gets it in the format it chose.

use foldhash::HashSet;
use mqim_broker::{Batch, Fmt, Publisher};
use mqim_proto::{encode_server, Format, ServerFrame};
use serde_json::Value;
use std::sync::Arc;

use parking_lot::Mutex;

/// Inbox formats (per user) that have had a subscriber since start-up. Published
/// rumqttd matches a publish to a topic nobody subscribed against every filter (it
/// caches only matches; the vendored topic-index patch makes that a hash lookup), and
/// a publish nobody receives is wasted work either way, so inbox frames go only to
/// formats someone has used; a device that subscribes later gets what it missed from
/// its backlog.
///
/// Filled by the broker hook when the SUBACK is written (before the client can see it),
/// so a frame sent after a client's subscription is confirmed is never skipped.
#[derive(Clone, Debug, Default)]
pub struct InboxFormats(Arc<Mutex<HashSet<(i64, Fmt)>>>);

impl InboxFormats {
    /// A device of `uid` subscribed to its inbox in `fmt` (both formats for `None`).
    pub fn subscribed(&self, uid: i64, fmt: Option<Fmt>) {
        let mut set = self.0.lock();
        match fmt {
            Some(f) => {
                set.insert((uid, f));
            }
            None => {
                for f in Fmt::ALL {
                    set.insert((uid, f));
                }
            }
        }
    }

    fn of(&self, uid: i64) -> [Option<Fmt>; 2] {
        let set = self.0.lock();
        Fmt::ALL.map(|f| set.contains(&(uid, f)).then_some(f))
    }
}

/// Sends frames into the broker.
#[derive(Clone, Debug)]
pub struct Push {
    publisher: Publisher,
    inbox_formats: InboxFormats,
}

/// Maps the broker's format to the frame codec's.
pub fn format_of(f: Fmt) -> Format {
    match f {
        Fmt::Json => Format::Json,
        Fmt::Pb => Format::Pb,
    }
}

impl Push {
    /// Wraps the broker's publisher; inbox frames go to the formats in `inbox_formats`.
    pub fn new(publisher: Publisher, inbox_formats: InboxFormats) -> Push {
        Push {
            publisher,
            inbox_formats,
        }
    }

    /// The raw publisher (for retained presence and internal topics).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Sends `frame` to all of user `uid`'s devices.
    pub fn to_user(&self, uid: i64, frame: &ServerFrame) {
        let mut b = Batch::default();
        self.to_users_in(&mut b, &[uid], frame);
        self.publisher.send(b);
    }

    /// Adds `frame` for all devices of each user in `uids` to `batch`, encoding it at
    /// most once per format; returns the encoded payloads (by format, those used).
    pub fn to_users_in(
        &self,
        batch: &mut Batch,
        uids: &[i64],
        frame: &ServerFrame,
    ) -> [Option<bytes::Bytes>; 2] {
        let mut encoded: [Option<bytes::Bytes>; 2] = [None, None];
        for &uid in uids {
            for f in self.inbox_formats.of(uid).into_iter().flatten() {
                let slot = &mut encoded[f as usize];
                let payload = slot
                    .get_or_insert_with(|| encode_server(format_of(f), frame).into())
                    .clone();
                batch.publish(format!("im/u/{uid}/in/{}", f.leaf()), payload, false);
            }
        }
        encoded
    }

    /// Hands `batch` to the broker (in order, in one go).
    pub fn send(&self, batch: Batch) {
        self.publisher.send(batch);
    }

    /// Sends `frame` to the members of group `gid` subscribed to its topic.
    pub fn to_group(&self, gid: i64, frame: &ServerFrame) {
        let mut b = Batch::default();
        self.to_group_in(&mut b, gid, frame);
        self.publisher.send(b);
    }

    /// Adds `frame` for the members of group `gid` to `batch`; returns the payloads.
    pub fn to_group_in(
        &self,
        batch: &mut Batch,
        gid: i64,
        frame: &ServerFrame,
    ) -> [Option<bytes::Bytes>; 2] {
        Fmt::ALL.map(|f| {
            let payload: bytes::Bytes = encode_server(format_of(f), frame).into();
            batch.publish(
                format!("im/g/{gid}/in/{}", f.leaf()),
                payload.clone(),
                false,
            );
            Some(payload)
        })
    }

    /// Sends an `event` frame (SPEC §4) to each user in `uids`.
    pub fn event(&self, uids: &[i64], event: &str, data: Value) {
        let frame = ServerFrame::Event {
            event: event.to_owned(),
            data,
        };
        for &uid in uids {
            self.to_user(uid, &frame);
        }
    }
}
