//! Argon2id password hashing on the blocking pool, a few at a time.
//!
//! A hash or verify takes ~20 ms of CPU. Running them on tokio workers would stall
//! message traffic during a login burst, so they run under `spawn_blocking`, and a
//! semaphore keeps a burst from taking every core: logins queue, messages flow.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// Bounded-concurrency Argon2id hasher.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A valid hash of a random password, verified against when the user does not
    /// exist, so "unknown user" and "wrong password" take the same time.
    dummy: Arc<String>,
}

impl Hasher {
    /// A hasher running at most `concurrency` hashes at once.
    pub fn new(concurrency: usize) -> Hasher {
        let dummy = hash_now("not-a-real-password-8c1f").unwrap_or_default();
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(dummy),
        }
    }

    /// Hashes `password` (Argon2id, random salt) into a PHC string.
    ///
    /// # Errors
    /// Only if the blocking pool is gone or hashing itself fails.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        tokio::task::spawn_blocking(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `phc`; with `None` verifies against a dummy hash and
    /// returns false (constant work for unknown users).
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        known && ok
    }
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(2);
        let phc = h.hash("correct horse".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify("correct horse".into(), Some(phc.clone())).await);
        assert!(!h.verify("wrong".into(), Some(phc)).await);
        assert!(!h.verify("whatever".into(), None).await);
    }
}
