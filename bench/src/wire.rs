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
    if let Some((content, seq)) = scan_message(payload) {
        return Rx::Msg(Cow::Borrowed(content), Some(seq));
    }
    // Every 1:1 message brings its sender an ack, of which nothing is read but its kind.
    if payload.starts_with(br#"{"type":"ack","#) {
        return Rx::Ack;
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

/// Content and seq of a `message` frame whose content needs no unescaping (every
/// benchmark content), found without parsing the whole frame; `None` sends the frame
/// to the full JSON parse.
///
/// The load client shares the server's two cores, so what it spends per received
/// message is taken from the server. A full parse of mqim's ~290-byte frame cost the
/// client several times what reading a plain broker's raw payload costs, and measurably
/// slowed the server beside it (BENCHMARKS.md, session 15); this keeps the client's work
/// per delivery about the same for every system.
fn scan_message(payload: &[u8]) -> Option<(&str, i64)> {
    const KIND: &[u8] = br#"{"type":"message","#;
    const CONTENT: &[u8] = br#","content":""#;
    const SEQ: &[u8] = br#","seq":"#;
    if !payload.starts_with(KIND) {
        return None;
    }
    let find = |pat: &[u8]| payload.windows(pat.len()).position(|w| w == pat);
    let start = find(CONTENT)? + CONTENT.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    let content = &payload[start..start + len];
    // A backslash means an escape (the first quote found may be an escaped one): leave
    // that content to the full parse. mqim writes `seq` before `content`, and no field
    // before them is a string that could hold either name.
    if content.contains(&b'\\') {
        return None;
    }
    let at = find(SEQ)? + SEQ.len();
    if at > start {
        return None;
    }
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let seq = std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((std::str::from_utf8(content).ok()?, seq))
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
        // A frame as mqim writes it: the scan finds what the full parse finds.
        let frame = br#"{"type":"message","id":91,"conversation_id":"g:3","seq":17,"from":5,"to_group":3,"msg_type":"text","content":"g:4:1765100000000:xxxx","client_msg_id":"g4","created_at":1765100000000}"#;
        assert_eq!(scan_message(frame), Some(("g:4:1765100000000:xxxx", 17)));
        let full: Frame = serde_json::from_slice(frame).expect("json");
        assert_eq!(full.content.as_deref(), Some("g:4:1765100000000:xxxx"));
        assert_eq!(full.seq, Some(17));
        // Escaped content, other field orders and other kinds go to the full parse.
        let escaped = br#"{"type":"message","seq":2,"content":"a\"b:c","from":1}"#;
        assert_eq!(scan_message(escaped), None);
        match parse(true, escaped) {
            Rx::Msg(c, Some(2)) => assert_eq!(c, "a\"b:c"),
            other => panic!("{other:?}"),
        }
        let late_seq = br#"{"type":"message","content":"m:1","seq":3}"#;
        assert_eq!(scan_message(late_seq), None);
        assert!(matches!(parse(true, late_seq), Rx::Msg(_, Some(3))));
        assert_eq!(
            scan_message(br#"{"type":"ack","seq":1,"content":"x"}"#),
            None
        );
        assert!(matches!(
            parse(
                true,
                br#"{"type":"ack","client_msg_id":"1-2","id":5,"seq":1}"#
            ),
            Rx::Ack
        ));
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
