//! The topic rules of SPEC §4, as pure functions.
//!
//! rumqttd has no authorization hook, so [`crate::guard`] asks these functions about every
//! SUBSCRIBE, every client PUBLISH and every PUBLISH about to be written to a client. They
//! must be cheap (they run on the packet path) and must never consult anything but the
//! caller's identity and an in-memory [`AccessGraph`].
//!
//! | topic | publish | subscribe |
//! |---|---|---|
//! | `im/u/{uid}/out/{fmt}` | `uid` | nobody |
//! | `im/u/{uid}/in/{fmt}` | server | `uid` |
//! | `im/g/{gid}/in/{fmt}` | server | members of `gid` |
//! | `im/p/{uid}` | server | `uid` and friends |
//!
//! Wildcards never widen a grant: `+` or `#` is accepted only as the last level of an
//! inbox or group filter that is itself granted (so `im/u/7/in/+` is fine for user 7),
//! and nowhere else.

/// Wire format selected by the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fmt {
    /// UTF-8 JSON objects.
    Json,
    /// Protobuf `ClientFrame` / `ServerFrame`.
    Pb,
}

impl Fmt {
    /// Both formats, in the order the server publishes them.
    pub const ALL: [Fmt; 2] = [Fmt::Json, Fmt::Pb];

    /// Parses a topic leaf (`json` or `pb`).
    pub fn from_leaf(leaf: &str) -> Option<Fmt> {
        match leaf {
            "json" => Some(Fmt::Json),
            "pb" => Some(Fmt::Pb),
            _ => None,
        }
    }

    /// The topic leaf of this format.
    pub fn leaf(self) -> &'static str {
        match self {
            Fmt::Json => "json",
            Fmt::Pb => "pb",
        }
    }
}

/// Membership and friendship as the rules need them. Implementations keep both in
/// memory and update them when the social graph changes.
pub trait AccessGraph: Send + Sync {
    /// Whether `uid` is currently a member of group `gid`.
    fn is_member(&self, uid: i64, gid: i64) -> bool;
    /// Whether `a` and `b` are friends.
    fn are_friends(&self, a: i64, b: i64) -> bool;
    /// A number that changes whenever an answer of `is_member` or `are_friends` may
    /// have changed, so that a connection may reuse its last answer while it stays
    /// the same; `None` (the default) if answers must not be reused.
    fn version(&self) -> Option<u64> {
        None
    }
}

/// A concrete mqim topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `im/u/{uid}/out/{fmt}`: frames from the user's devices to the server.
    UserOut { uid: i64, fmt: Fmt },
    /// `im/u/{uid}/in/{fmt}`: frames from the server to all the user's devices.
    UserIn { uid: i64, fmt: Fmt },
    /// `im/g/{gid}/in/{fmt}`: frames from the server to the group's members.
    GroupIn { gid: i64, fmt: Fmt },
    /// `im/p/{uid}`: the user's retained presence.
    Presence { uid: i64 },
}

impl Topic {
    /// Parses a topic name (no wildcards). Ids are positive decimals without sign or
    /// leading zeros, so every id has exactly one spelling.
    pub fn parse(topic: &str) -> Option<Topic> {
        let mut it = topic.split('/');
        if it.next()? != "im" {
            return None;
        }
        let kind = it.next()?;
        let id = parse_id(it.next()?)?;
        let t = match kind {
            "u" => {
                let dir = it.next()?;
                let fmt = Fmt::from_leaf(it.next()?)?;
                match dir {
                    "out" => Topic::UserOut { uid: id, fmt },
                    "in" => Topic::UserIn { uid: id, fmt },
                    _ => return None,
                }
            }
            "g" => {
                if it.next()? != "in" {
                    return None;
                }
                Topic::GroupIn {
                    gid: id,
                    fmt: Fmt::from_leaf(it.next()?)?,
                }
            }
            "p" => Topic::Presence { uid: id },
            _ => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(t)
    }

    /// The topic name.
    pub fn name(&self) -> String {
        match *self {
            Topic::UserOut { uid, fmt } => format!("im/u/{uid}/out/{}", fmt.leaf()),
            Topic::UserIn { uid, fmt } => format!("im/u/{uid}/in/{}", fmt.leaf()),
            Topic::GroupIn { gid, fmt } => format!("im/g/{gid}/in/{}", fmt.leaf()),
            Topic::Presence { uid } => format!("im/p/{uid}"),
        }
    }
}

/// What a granted subscription covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The user's own inbox, in one format or (`fmt: None`) every format.
    Inbox { uid: i64, fmt: Option<Fmt> },
    /// A group's topic, in one format or every format.
    Group { gid: i64, fmt: Option<Fmt> },
    /// Someone's presence.
    Presence { uid: i64 },
}

/// Decides whether `user` may subscribe to `filter`. `None` means refused.
pub fn may_subscribe(user: i64, filter: &str, graph: &dyn AccessGraph) -> Option<Grant> {
    let (base, fmt) = match filter.rsplit_once('/') {
        Some((base, "+" | "#")) => (base, None),
        _ => (filter, Some(())),
    };
    if fmt.is_none() {
        // Wildcard in the last level only: the rest must be a concrete prefix.
        if base.contains(['+', '#']) {
            return None;
        }
        // Parse the prefix by appending a concrete leaf.
        return match Topic::parse(&format!("{base}/json"))? {
            Topic::UserIn { uid, .. } if uid == user => Some(Grant::Inbox { uid, fmt: None }),
            Topic::GroupIn { gid, .. } if graph.is_member(user, gid) => {
                Some(Grant::Group { gid, fmt: None })
            }
            _ => None,
        };
    }
    match Topic::parse(filter)? {
        Topic::UserIn { uid, fmt } if uid == user => Some(Grant::Inbox {
            uid,
            fmt: Some(fmt),
        }),
        Topic::GroupIn { gid, fmt } if graph.is_member(user, gid) => Some(Grant::Group {
            gid,
            fmt: Some(fmt),
        }),
        Topic::Presence { uid } if uid == user || graph.are_friends(user, uid) => {
            Some(Grant::Presence { uid })
        }
        _ => None,
    }
}

/// Decides whether `user` may publish on `topic`; returns the format of their own
/// outbox, the only topic a client may publish on.
pub fn may_publish(user: i64, topic: &str) -> Option<Fmt> {
    match Topic::parse(topic)? {
        Topic::UserOut { uid, fmt } if uid == user => Some(fmt),
        _ => None,
    }
}

/// Decides at delivery time whether a publish on `topic` may still be written to
/// `user`: group frames only while a member, presence only while a friend. This is what
/// makes a kick or an unfriend take effect on subscriptions made before it.
pub fn may_receive(user: i64, topic: &str, graph: &dyn AccessGraph) -> bool {
    match Topic::parse(topic) {
        Some(Topic::UserIn { uid, .. }) => uid == user,
        Some(Topic::GroupIn { gid, .. }) => graph.is_member(user, gid),
        Some(Topic::Presence { uid }) => uid == user || graph.are_friends(user, uid),
        // The user's own outbox is never subscribable; anything else is not ours.
        Some(Topic::UserOut { .. }) | None => false,
    }
}

fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct G;
    impl AccessGraph for G {
        fn is_member(&self, uid: i64, gid: i64) -> bool {
            uid == 1 && gid == 10
        }
        fn are_friends(&self, a: i64, b: i64) -> bool {
            (a, b) == (1, 2) || (a, b) == (2, 1)
        }
    }

    #[test]
    fn parses_and_names_round_trip() {
        for t in [
            "im/u/1/out/json",
            "im/u/12/in/pb",
            "im/g/3/in/json",
            "im/p/99",
        ] {
            assert_eq!(Topic::parse(t).map(|t| t.name()).as_deref(), Some(t));
        }
        for bad in [
            "",
            "im",
            "im/u/01/in/json",
            "im/u/-1/in/json",
            "im/u/1/in/xml",
            "im/u/1/in/json/x",
            "im/x/1",
            "im/g/1/out/json",
            "im/p/1/x",
            "im/u/99999999999999999999/in/json",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn subscribe_rules() {
        let g = G;
        assert!(may_subscribe(1, "im/u/1/in/json", &g).is_some());
        assert!(may_subscribe(1, "im/u/1/in/+", &g).is_some());
        assert!(may_subscribe(1, "im/u/1/in/#", &g).is_some());
        assert!(may_subscribe(1, "im/u/2/in/json", &g).is_none());
        assert!(may_subscribe(1, "im/u/1/out/json", &g).is_none());
        assert!(may_subscribe(1, "im/g/10/in/pb", &g).is_some());
        assert!(may_subscribe(1, "im/g/10/in/+", &g).is_some());
        assert!(may_subscribe(1, "im/g/11/in/pb", &g).is_none());
        assert!(may_subscribe(1, "im/p/1", &g).is_some());
        assert!(may_subscribe(1, "im/p/2", &g).is_some());
        assert!(may_subscribe(1, "im/p/3", &g).is_none());
        for bad in [
            "#",
            "+",
            "im/#",
            "im/u/+/in/+",
            "im/u/+/in/json",
            "im/g/+/in/json",
            "im/p/+",
            "im/p/#",
            "$SYS/#",
            "$share/x/im/u/1/in/json",
            "im/u/1/#",
            "im/u/1/+/json",
        ] {
            assert!(may_subscribe(1, bad, &g).is_none(), "{bad}");
        }
    }

    #[test]
    fn publish_and_receive_rules() {
        let g = G;
        assert_eq!(may_publish(1, "im/u/1/out/pb"), Some(Fmt::Pb));
        assert_eq!(may_publish(1, "im/u/2/out/pb"), None);
        assert_eq!(may_publish(1, "im/u/1/in/pb"), None);
        assert_eq!(may_publish(1, "im/g/10/in/pb"), None);
        assert_eq!(may_publish(1, "im/p/1"), None);
        assert!(may_receive(1, "im/g/10/in/json", &g));
        assert!(!may_receive(2, "im/g/10/in/json", &g));
        assert!(may_receive(2, "im/p/1", &g));
        assert!(!may_receive(3, "im/p/1", &g));
        assert!(!may_receive(1, "im/u/2/in/json", &g));
    }
}
