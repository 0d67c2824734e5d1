//! What goes on the wire, for mqim and for a plain broker, with the same size.
//!
//! Every benchmark message carries a short ASCII *content* — its kind, ids and the send
//! timestamp in microseconds — padded with `x`:
//!
//! * to a plain broker the content is the whole payload, padded to `size` bytes;
//! * to mqim it is the `content` of a JSON `send` frame, padded so that the published
//!   frame is `size` bytes. What mqim then delivers is its `message` frame (the content
//!   plus id, seq, conversation, sender, timestamps: about 150 bytes more).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;

/// Microseconds since the harness started (one clock for senders and receivers: both
/// are in this process).
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The recipient of an mqim send.
#[derive(Debug, Clone, Copy)]
pub enum To {
    /// A user (one-to-one).
    User(i64),
    /// A group.
    Group(i64),
}

/// Builds a payload of about `size` bytes carrying `content`.
/// `mqim` = `Some((recipient, client_msg_id))` for a send frame, `None` for plain.
pub fn payload(mqim: Option<(To, &str)>, content: &str, size: usize) -> Vec<u8> {
    match mqim {
        None => pad(content.to_owned(), size).into_bytes(),
        Some((to, cmid)) => {
            let (key, id) = match to {
                To::User(u) => ("to_user", u),
                To::Group(g) => ("to_group", g),
            };
            let head = format!(
                "{{\"type\":\"send\",\"client_msg_id\":\"{cmid}\",\"{key}\":{id},\"msg_type\":\"text\",\"content\":\""
            );
            let tail = "\"}";
            let body = pad(
                content.to_owned(),
                size.saturating_sub(head.len() + tail.len()),
            );
            format!("{head}{body}{tail}").into_bytes()
        }
    }
}

fn pad(mut s: String, size: usize) -> String {
    while s.len() < size {
        s.push('x');
    }
    s
}

/// A received payload, classified.
#[derive(Debug)]
pub enum Rx<'a> {
    /// A message carrying a benchmark content (with mqim's seq when there is one).
    Msg(Cow<'a, str>, Option<i64>),
    /// mqim's ack of a send.
    Ack,
    /// mqim's error frame: code.
    Error(String),
    /// Anything else (events, frames of other kinds).
    Other,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

/// Classifies a received payload (`mqim`: a JSON server frame; else plain content).
pub fn parse(mqim: bool, payload: &[u8]) -> Rx<'_> {
    if !mqim {
        return match std::str::from_utf8(payload) {
            Ok(s) => Rx::Msg(Cow::Borrowed(s), None),
            Err(_) => Rx::Other,
        };
    }
    match serde_json::from_slice::<Frame>(payload) {
        Ok(f) => match f.kind.as_ref() {
            "message" => match f.content {
                Some(c) => Rx::Msg(c, f.seq),
                None => Rx::Other,
            },
            "ack" => Rx::Ack,
            "error" => Rx::Error(f.code.map(|c| c.into_owned()).unwrap_or_default()),
            _ => Rx::Other,
        },
        Err(_) => Rx::Other,
    }
}

/// The numeric fields of a content `tag:a:b:c:…` after `tag`.
pub fn fields<const N: usize>(content: &str, tag: &str) -> Option<[u64; N]> {
    let mut it = content.split(':');
    if it.next()? != tag {
        return None;
    }
    let mut out = [0u64; N];
    for o in &mut out {
        *o = it.next()?.parse().ok()?;
    }
    Some(out)
}

/// A growable bitset: which message numbers of one stream arrived.
#[derive(Default, Debug)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Marks `n`; false if it was already marked (a duplicate).
    pub fn insert(&mut self, n: u64) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let fresh = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_parsing() {
        let p = payload(Some((To::User(7), "1-2")), "m:0:1:2:3:", 200);
        assert_eq!(p.len(), 200);
        let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(v["to_user"], 7);
        assert_eq!(payload(None, "g:1:2:", 200).len(), 200);
        let frame = br#"{"type":"message","seq":4,"content":"m:0:1:2:3:xx","from":1}"#;
        match parse(true, frame) {
            Rx::Msg(c, Some(4)) => assert_eq!(fields::<4>(&c, "m"), Some([0, 1, 2, 3])),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(true, br#"{"type":"error","code":"rate_limited"}"#),
            Rx::Error(c) if c == "rate_limited"
        ));
        let mut s = Seen::default();
        assert!(s.insert(130));
        assert!(!s.insert(130));
        assert!(s.insert(0));
    }
}
