//! Publishing server frames to users and groups, in every format.
//!
//! A frame goes to `…/in/json` and `…/in/pb`; the broker drops a publish nobody is
//! subscribed to at almost no cost, so each subscriber gets it in the format it chose.

use mqim_broker::{Fmt, Publisher};
use mqim_proto::{encode_server, Format, ServerFrame};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

/// Sends frames into the broker.
#[derive(Clone, Debug)]
pub struct Push {
    publisher: Publisher,
    /// Inbox formats that have had a subscriber since start-up. rumqttd matches a publish
    /// to a topic nobody subscribed against every filter (it caches only matches), so
    /// inbox frames go only to formats someone has used; a device that subscribes later
    /// gets what it missed from its backlog.
    inbox_formats: Arc<Mutex<HashSet<(i64, Fmt)>>>,
}

/// Maps the broker's format to the frame codec's.
pub fn format_of(f: Fmt) -> Format {
    match f {
        Fmt::Json => Format::Json,
        Fmt::Pb => Format::Pb,
    }
}

impl Push {
    /// Wraps the broker's publisher.
    pub fn new(publisher: Publisher) -> Push {
        Push {
            publisher,
            inbox_formats: Arc::default(),
        }
    }

    /// A device of `uid` subscribed to its inbox in `fmt` (both formats for `None`).
    pub fn inbox_subscribed(&self, uid: i64, fmt: Option<Fmt>) {
        let mut set = self.inbox_formats.lock();
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

    /// The raw publisher (for retained presence and internal topics).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Sends `frame` to all of user `uid`'s devices.
    pub fn to_user(&self, uid: i64, frame: &ServerFrame) {
        let formats: Vec<Fmt> = {
            let set = self.inbox_formats.lock();
            Fmt::ALL
                .into_iter()
                .filter(|f| set.contains(&(uid, *f)))
                .collect()
        };
        for f in formats {
            let topic = format!("im/u/{uid}/in/{}", f.leaf());
            self.publisher
                .publish(topic, encode_server(format_of(f), frame), false);
        }
    }

    /// Sends `frame` to the members of group `gid` subscribed to its topic.
    pub fn to_group(&self, gid: i64, frame: &ServerFrame) {
        for f in Fmt::ALL {
            let topic = format!("im/g/{gid}/in/{}", f.leaf());
            self.publisher
                .publish(topic, encode_server(format_of(f), frame), false);
        }
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
