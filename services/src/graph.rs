//! In-memory view of friendships, group memberships, mutes and blocks, for the topic
//! rules and the messaging hot path.
//!
//! The broker checks these on every SUBSCRIBE and every group or presence publish it
//! writes to a client, and every sent message checks friendship or membership, mutes
//! and blocks, so they must be memory lookups (the frame dispatcher handles frames one
//! after another: a database round trip per group send made the 50th send of a burst
//! wait for 49 of them). The view is loaded from the
//! database at start-up and updated by the social service right after each change
//! commits (the database stays the source of truth).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use sqlx::Row;

use crate::db::Db;

/// Friendships and memberships.
#[derive(Debug, Default)]
pub struct SocialGraph {
    friends: RwLock<HashMap<i64, HashSet<i64>>>,
    members: RwLock<HashMap<i64, HashSet<i64>>>,
    /// blocker → the users they block.
    blocks: RwLock<HashMap<i64, HashSet<i64>>>,
    /// (group, member) → muted until (unix ms), for members with a mute set.
    mutes: RwLock<HashMap<(i64, i64), i64>>,
    /// Raised, under the write lock, by every change of `friends` or `members`
    /// ([`mqim_broker::AccessGraph::version`]): a broker connection that is written the
    /// same group topic again re-checks membership only after a change.
    version: AtomicU64,
}

impl SocialGraph {
    /// Loads the whole graph.
    ///
    /// # Errors
    /// Database errors.
    pub async fn load(db: &Db) -> Result<SocialGraph, sqlx::Error> {
        let g = SocialGraph::default();
        let rows = sqlx::query("SELECT user_id, friend_id FROM friendships")
            .fetch_all(&db.pool)
            .await?;
        {
            let mut f = g.friends.write();
            for r in rows {
                let (a, b): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                f.entry(a).or_default().insert(b);
            }
        }
        let rows = sqlx::query(
            "SELECT m.group_id, m.user_id FROM group_members m \
             JOIN chat_groups g ON g.id = m.group_id WHERE g.dissolved_at IS NULL",
        )
        .fetch_all(&db.pool)
        .await?;
        {
            let mut m = g.members.write();
            for r in rows {
                let (gid, uid): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                m.entry(gid).or_default().insert(uid);
            }
        }
        let rows = sqlx::query(
            "SELECT m.group_id, m.user_id, m.muted_until FROM group_members m \
             JOIN chat_groups g ON g.id = m.group_id \
             WHERE g.dissolved_at IS NULL AND m.muted_until IS NOT NULL",
        )
        .fetch_all(&db.pool)
        .await?;
        {
            let mut m = g.mutes.write();
            for r in rows {
                let (gid, uid, until): (i64, i64, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                m.insert((gid, uid), until);
            }
        }
        let rows = sqlx::query("SELECT user_id, blocked_id FROM blocks")
            .fetch_all(&db.pool)
            .await?;
        {
            let mut b = g.blocks.write();
            for r in rows {
                let (blocker, blocked): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                b.entry(blocker).or_default().insert(blocked);
            }
        }
        Ok(g)
    }

    /// Marks a change of friendships or memberships; called with the write lock held,
    /// so whoever sees the new version also sees the change.
    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Records that `blocker` blocks `blocked`.
    pub fn add_block(&self, blocker: i64, blocked: i64) {
        self.blocks
            .write()
            .entry(blocker)
            .or_default()
            .insert(blocked);
    }

    /// Forgets that `blocker` blocks `blocked`.
    pub fn remove_block(&self, blocker: i64, blocked: i64) {
        if let Some(s) = self.blocks.write().get_mut(&blocker) {
            s.remove(&blocked);
        }
    }

    /// Whether `blocker` blocks `blocked` (who then may neither message nor send
    /// requests to `blocker`).
    pub fn is_blocked(&self, blocker: i64, blocked: i64) -> bool {
        self.blocks
            .read()
            .get(&blocker)
            .is_some_and(|s| s.contains(&blocked))
    }

    /// Records a friendship (both directions).
    pub fn add_friends(&self, a: i64, b: i64) {
        let mut f = self.friends.write();
        f.entry(a).or_default().insert(b);
        f.entry(b).or_default().insert(a);
        self.changed();
    }

    /// Forgets a friendship (both directions).
    pub fn remove_friends(&self, a: i64, b: i64) {
        let mut f = self.friends.write();
        if let Some(s) = f.get_mut(&a) {
            s.remove(&b);
        }
        if let Some(s) = f.get_mut(&b) {
            s.remove(&a);
        }
        self.changed();
    }

    /// The user's friends.
    pub fn friends_of(&self, uid: i64) -> Vec<i64> {
        self.friends
            .read()
            .get(&uid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records a membership.
    pub fn add_member(&self, gid: i64, uid: i64) {
        let mut m = self.members.write();
        m.entry(gid).or_default().insert(uid);
        self.changed();
    }

    /// Forgets a membership (and its mute).
    pub fn remove_member(&self, gid: i64, uid: i64) {
        {
            let mut m = self.members.write();
            if let Some(s) = m.get_mut(&gid) {
                s.remove(&uid);
            }
            self.changed();
        }
        self.mutes.write().remove(&(gid, uid));
    }

    /// Forgets a whole group (dissolved).
    pub fn remove_group(&self, gid: i64) {
        {
            let mut m = self.members.write();
            m.remove(&gid);
            self.changed();
        }
        self.mutes.write().retain(|&(g, _), _| g != gid);
    }

    /// Records a member's mute (`Some(until)`, unix ms) or its lifting (`None`).
    pub fn set_muted(&self, gid: i64, uid: i64, until: Option<i64>) {
        let mut m = self.mutes.write();
        match until {
            Some(t) => m.insert((gid, uid), t),
            None => m.remove(&(gid, uid)),
        };
    }

    /// Until when (unix ms) the member is muted, if a mute is set (it may have passed).
    pub fn muted_until(&self, gid: i64, uid: i64) -> Option<i64> {
        self.mutes.read().get(&(gid, uid)).copied()
    }

    /// The group's members.
    pub fn members_of(&self, gid: i64) -> Vec<i64> {
        self.members
            .read()
            .get(&gid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl mqim_broker::AccessGraph for SocialGraph {
    fn is_member(&self, uid: i64, gid: i64) -> bool {
        self.members
            .read()
            .get(&gid)
            .is_some_and(|s| s.contains(&uid))
    }

    fn are_friends(&self, a: i64, b: i64) -> bool {
        self.friends.read().get(&a).is_some_and(|s| s.contains(&b))
    }

    fn version(&self) -> Option<u64> {
        Some(self.version.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqim_broker::AccessGraph;

    /// Every change the delivery check depends on raises the version (the broker's
    /// connections reuse their last answer while it stays the same).
    #[test]
    fn membership_and_friendship_changes_raise_the_version() {
        let g = SocialGraph::default();
        let mut last = g.version().expect("versioned");
        let mut raised = |g: &SocialGraph, what: &str| {
            let v = g.version().expect("versioned");
            assert!(v > last, "{what} must raise the version");
            last = v;
        };
        g.add_member(10, 1);
        raised(&g, "add_member");
        g.remove_member(10, 1);
        raised(&g, "remove_member");
        g.add_member(10, 2);
        g.remove_group(10);
        raised(&g, "remove_group");
        assert!(!g.is_member(2, 10));
        g.add_friends(1, 2);
        raised(&g, "add_friends");
        g.remove_friends(1, 2);
        raised(&g, "remove_friends");
    }
}
