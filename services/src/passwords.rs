//! Argon2id password hashing on the blocking pool, a few at a time, in reused memory.
//!
//! A hash or verify takes ~20 ms of CPU. Running them on tokio workers would stall
//! message traffic during a login burst, so they run under `spawn_blocking`, and a
//! semaphore keeps a burst from taking every core: logins queue, messages flow.
//!
//! Each hash needs 19 MiB of working memory. Allocated per hash, glibc's malloc raised
//! its mmap threshold after the first free and then kept those blocks in its per-thread
//! heaps: the process held ~800 MiB after 300 registrations. So the hasher owns one
//! working area per permit, allocated once and reused (38 MiB with the default
//! `auth.hash_concurrency` of 2), and hashes with `hash_password_into_with_memory`.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Bounded-concurrency Argon2id hasher.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Working memory, one area per permit (taken while hashing, then put back).
    areas: Arc<Mutex<Vec<Vec<Block>>>>,
    /// A valid hash of a random password, verified against when the user does not
    /// exist, so "unknown user" and "wrong password" take the same time.
    dummy: Arc<String>,
}

impl Hasher {
    /// A hasher running at most `concurrency` hashes at once.
    pub fn new(concurrency: usize) -> Hasher {
        let mut area = Vec::new();
        let dummy = hash_in("not-a-real-password-8c1f".as_bytes(), &mut area).unwrap_or_default();
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            areas: Arc::new(Mutex::new(vec![area])),
            dummy: Arc::new(dummy),
        }
    }

    /// Runs `f` with a working area on the blocking pool, under a permit.
    async fn with_area<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        // Never more areas than permits: one is free for every permit held.
        let mut area = self.areas.lock().pop().unwrap_or_default();
        let areas = self.areas.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let out = f(&mut area);
            areas.lock().push(area);
            out
        })
        .await?)
    }

    /// Hashes `password` (Argon2id, random salt) into a PHC string.
    ///
    /// # Errors
    /// Only if the blocking pool is gone or hashing itself fails.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.with_area(move |area| hash_in(password.as_bytes(), area))
            .await?
    }

    /// Whether `password` matches `phc`; with `None` verifies against a dummy hash and
    /// returns false (constant work for unknown users).
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_ref().clone());
        let ok = self
            .with_area(move |area| verify_in(password.as_bytes(), &phc, area))
            .await
            .unwrap_or(false);
        known && ok
    }
}

/// Grows `area` to `blocks` blocks (only the first use, or parameters raised since).
fn fit(area: &mut Vec<Block>, blocks: usize) {
    if area.len() < blocks {
        area.resize(blocks, Block::default());
    }
}

/// Argon2id with the crate's default (OWASP) parameters, into a PHC string.
fn hash_in(password: &[u8], area: &mut Vec<Block>) -> anyhow::Result<String> {
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("argon2: {e}");
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|x| e(&x))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    fit(area, params.block_count());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt_bytes, &mut out, &mut area[..])
        .map_err(|x| e(&x))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|x| e(&x))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|x| e(&x))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (with the parameters stored in it).
fn verify_in(password: &[u8], phc: &str, area: &mut Vec<Block>) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(alg), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(h.algorithm),
        Params::try_from(&h),
        h.salt,
        h.hash,
    ) else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    fit(area, params.block_count());
    if Argon2::new(alg, version, params)
        .hash_password_into_with_memory(password, salt_bytes, &mut out, &mut area[..])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
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

    #[tokio::test]
    async fn hashes_of_the_stock_argon2_api_verify_and_vice_versa() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(1);
        let salt = SaltString::generate(&mut OsRng);
        let stock = Argon2::default()
            .hash_password(b"pw one", &salt)
            .expect("hash")
            .to_string();
        assert!(h.verify("pw one".into(), Some(stock.clone())).await);
        assert!(!h.verify("pw two".into(), Some(stock)).await);
        let ours = h.hash("pw three".into()).await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(Argon2::default()
            .verify_password(b"pw three", &parsed)
            .is_ok());
        // Other parameters in a stored hash (e.g. raised later) still verify.
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(32 * 1024, 3, 1, None).expect("params"),
        )
        .hash_password(b"pw four", &salt)
        .expect("hash")
        .to_string();
        assert!(h.verify("pw four".into(), Some(strong)).await);
        for junk in [
            "",
            "$argon2id$",
            "plain",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$",
        ] {
            assert!(!h.verify("pw".into(), Some(junk.to_owned())).await);
        }
    }
}
