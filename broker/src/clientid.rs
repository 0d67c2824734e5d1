//! Client id rules of SPEC §4, checked before rumqttd ever sees the id.
//!
//! rumqttd kills a connection task early for ids containing `/`, `+`, `#` or `$`, and the
//! stale bookkeeping that leaves behind poisons the listener for everyone (see
//! `shared/notes/rumqttd-0.20.md`, bug 2). Refusing such ids here, while reading CONNECT,
//! means they never reach that code.

/// Longest device suffix after `username-`.
pub const MAX_SUFFIX: usize = 64;

/// Whether `username` has the shape of an mqim username (`^[a-z0-9_]{3,32}$`).
pub fn valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `client_id` is allowed for `username`: the username itself, or the username,
/// `-`, and 1–64 of `[A-Za-z0-9_]`.
pub fn valid_client_id(client_id: &str, username: &str) -> bool {
    if !valid_username(username) {
        return false;
    }
    let Some(rest) = client_id.strip_prefix(username) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(suffix) = rest.strip_prefix('-') else {
        return false;
    };
    (1..=MAX_SUFFIX).contains(&suffix.len())
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(valid_client_id("alice", "alice"));
        assert!(valid_client_id("alice-phone_1", "alice"));
        assert!(valid_client_id(
            &format!("alice-{}", "x".repeat(64)),
            "alice"
        ));
        for bad in [
            "",
            "bob",
            "alicex",
            "alice-",
            "alice-a/b",
            "alice-x+",
            "alice-x#",
            "alice-$x",
            "alice-é",
            "alice--x",
        ] {
            assert!(!valid_client_id(bad, "alice"), "{bad}");
        }
        assert!(!valid_client_id(
            &format!("alice-{}", "x".repeat(65)),
            "alice"
        ));
        assert!(!valid_client_id("a/b", "a/b"));
        assert!(!valid_username("Alice"));
        assert!(!valid_username("al"));
    }
}
