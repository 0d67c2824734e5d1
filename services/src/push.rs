//! Publishing server frames to users and groups, in every format.
//!
//! A frame goes to `…/in/json` and `…/in/pb`; the broker drops a publish nobody is
//! subscribed to at almost no cost, so each subscriber gets it in the format it chose.

use mqim_broker::{Fmt, Publisher};
use mqim_proto::{encode_server, Format, ServerFrame};
use serde_json::Value;

/// Sends frames into the broker.
#[derive(Clone, Debug)]
pub struct Push {
    publisher: Publisher,
}

fn format_of(f: Fmt) -> Format {
    match f {
        Fmt::Json => Format::Json,
        Fmt::Pb => Format::Pb,
    }
}

impl Push {
    /// Wraps the broker's publisher.
    pub fn new(publisher: Publisher) -> Push {
        Push { publisher }
    }

    /// The raw publisher (for retained presence and internal topics).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Sends `frame` to all of user `uid`'s devices.
    pub fn to_user(&self, uid: i64, frame: &ServerFrame) {
        for f in Fmt::ALL {
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
