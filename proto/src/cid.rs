//! Conversation ids: `u:{a}:{b}` (one-to-one, `0 < a < b`) and `g:{gid}` (group).
//!
//! Frames carry conversation ids as plain strings (that is what clients see and store), and
//! the server uses them as keys, so [`ConversationId::parse`] accepts only the canonical
//! spelling: decimal without sign or leading zeros, users in ascending order. Then
//! `parse(s)?.to_string() == s` always holds, and two spellings of one conversation cannot
//! exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FrameError;

/// A parsed conversation id.
///
/// Displays as (and [`parse`](Self::parse)s from) `u:{a}:{b}` or `g:{gid}`. Serde
/// serializes it as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// One-to-one conversation between two users, smaller id first. Build it with
    /// [`ConversationId::direct`], which orders the ids.
    Direct(i64, i64),
    /// Conversation of a group.
    Group(i64),
}

impl ConversationId {
    /// The one-to-one conversation of users `x` and `y`, in either order:
    /// `direct(7, 3) == Direct(3, 7)`.
    ///
    /// This does not check the ids: `direct(5, 5)` or non-positive ids give an id for which
    /// [`is_valid`](Self::is_valid) is false (and whose string `parse` rejects).
    pub fn direct(x: i64, y: i64) -> Self {
        if x <= y {
            ConversationId::Direct(x, y)
        } else {
            ConversationId::Direct(y, x)
        }
    }

    /// The conversation of group `gid`.
    pub fn group(gid: i64) -> Self {
        ConversationId::Group(gid)
    }

    /// Parses the canonical string form `u:{a}:{b}` (with `0 < a < b`) or `g:{gid}` (with
    /// `gid > 0`). Numbers are decimal, without sign or leading zeros.
    pub fn parse(s: &str) -> Result<Self, FrameError> {
        let bad = |why: &str| {
            FrameError::invalid(format!(
                "invalid `conversation_id`: {why} (expected `u:{{a}}:{{b}}` with 0 < a < b, or `g:{{gid}}`)"
            ))
        };
        if let Some(rest) = s.strip_prefix("u:") {
            let (a, b) = rest
                .split_once(':')
                .ok_or_else(|| bad("missing second user id"))?;
            let a = parse_id(a).ok_or_else(|| bad("first user id is not a positive integer"))?;
            let b = parse_id(b).ok_or_else(|| bad("second user id is not a positive integer"))?;
            if a >= b {
                return Err(bad("user ids must be in ascending order and distinct"));
            }
            Ok(ConversationId::Direct(a, b))
        } else if let Some(rest) = s.strip_prefix("g:") {
            let g = parse_id(rest).ok_or_else(|| bad("group id is not a positive integer"))?;
            Ok(ConversationId::Group(g))
        } else {
            Err(bad("unknown prefix"))
        }
    }

    /// True when this id is well-formed: `0 < a < b` for `Direct(a, b)`, `gid > 0` for
    /// `Group(gid)`. Exactly the ids whose string form [`parse`](Self::parse) accepts.
    pub fn is_valid(&self) -> bool {
        match *self {
            ConversationId::Direct(a, b) => 0 < a && a < b,
            ConversationId::Group(g) => g > 0,
        }
    }

    /// The group id for a group conversation, `None` for a one-to-one conversation.
    pub fn group_id(&self) -> Option<i64> {
        match *self {
            ConversationId::Group(g) => Some(g),
            ConversationId::Direct(..) => None,
        }
    }

    /// For a one-to-one conversation that `uid` takes part in, the other user; otherwise
    /// `None` (including for group conversations).
    pub fn peer_of(&self, uid: i64) -> Option<i64> {
        match *self {
            ConversationId::Direct(a, b) if a == uid => Some(b),
            ConversationId::Direct(a, b) if b == uid => Some(a),
            _ => None,
        }
    }
}

/// Parses a canonical positive decimal `i64`: ASCII digits only, no leading zero.
fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct(a, b) => write!(f, "u:{a}:{b}"),
            ConversationId::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl FromStr for ConversationId {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConversationId::parse(s)
    }
}

impl Serialize for ConversationId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ConversationId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["u:1:2", "u:3:9223372036854775807", "g:1", "g:42"] {
            let c = ConversationId::parse(s).expect(s);
            assert!(c.is_valid());
            assert_eq!(c.to_string(), s);
            assert_eq!(s.parse::<ConversationId>(), Ok(c));
        }
        assert_eq!(
            ConversationId::parse("u:3:7"),
            Ok(ConversationId::Direct(3, 7))
        );
        assert_eq!(ConversationId::parse("g:5"), Ok(ConversationId::Group(5)));
    }

    #[test]
    fn parse_rejects_non_canonical_and_garbage() {
        for s in [
            "",
            "u",
            "u:",
            "u:1",
            "u:1:",
            "u::2",
            "u:2:1",
            "u:1:1",
            "u:0:1",
            "u:-1:2",
            "u:+1:2",
            "u:01:2",
            "u:1:2:3",
            "u:1:2 ",
            " u:1:2",
            "u:1:99999999999999999999",
            "U:1:2",
            "g:",
            "g:0",
            "g:-3",
            "g:007",
            "g:1x",
            "g:1:2",
            "x:1",
            "u:١:٢",
        ] {
            let err = ConversationId::parse(s).expect_err(s);
            assert!(err.to_string().contains("conversation_id"), "{err}");
        }
    }

    #[test]
    fn direct_normalizes_order() {
        assert_eq!(ConversationId::direct(7, 3), ConversationId::Direct(3, 7));
        assert_eq!(ConversationId::direct(3, 7), ConversationId::Direct(3, 7));
        assert_eq!(ConversationId::direct(7, 3).to_string(), "u:3:7");
        assert!(!ConversationId::direct(5, 5).is_valid());
        assert!(!ConversationId::direct(0, 5).is_valid());
        assert!(!ConversationId::group(0).is_valid());
    }

    #[test]
    fn helpers() {
        let d = ConversationId::direct(9, 4);
        assert_eq!(d.peer_of(4), Some(9));
        assert_eq!(d.peer_of(9), Some(4));
        assert_eq!(d.peer_of(5), None);
        assert_eq!(d.group_id(), None);
        let g = ConversationId::group(8);
        assert_eq!(g.group_id(), Some(8));
        assert_eq!(g.peer_of(8), None);
    }

    #[test]
    fn serde_as_string() {
        let c = ConversationId::direct(2, 1);
        assert_eq!(serde_json::to_string(&c).ok().as_deref(), Some("\"u:1:2\""));
        let back: ConversationId = serde_json::from_str("\"u:1:2\"").expect("parse");
        assert_eq!(back, c);
        assert!(serde_json::from_str::<ConversationId>("\"u:2:1\"").is_err());
        assert!(serde_json::from_str::<ConversationId>("12").is_err());
    }
}
