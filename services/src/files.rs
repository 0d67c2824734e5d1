//! Attachments: a content-addressed file store on local disk, and signed download URLs.
//!
//! Why it is built this way:
//! * **Streamed, never buffered.** An upload is written chunk by chunk to a temporary
//!   file in `<data_dir>/files/tmp/` while SHA-256 is computed over the same chunks, so
//!   a 50 MiB video costs a few kilobytes of memory. Limits are checked as the bytes
//!   arrive: an oversized upload is cut off at its limit, not after it has been stored.
//! * **No partial files.** The temporary file belongs to a [`TempGuard`] that removes it
//!   when dropped uncommitted — on a limit, a refused type, a broken body, or when the
//!   client goes away and the request future is dropped. Only a complete, synced file is
//!   renamed (atomically) to `<data_dir>/files/<aa>/<sha256>`, so readers never see a
//!   half-written file.
//! * **Stored once.** The name is the hash, so identical content lands on the same path
//!   (two racing uploads rename identical bytes onto each other, which is harmless) and
//!   the `files` row is inserted with `ON CONFLICT DO NOTHING`.
//! * **Sniffed types.** The type comes from the first bytes (the `infer` crate: magic
//!   numbers only, no C library, no database files), never from the client's name or
//!   header, so the allowed-types rule cannot be dodged by renaming a file, and the type
//!   we serve is the one the bytes have.
//! * **Signed URLs** let a client put a download in an `<img>` or a media player, which
//!   cannot send an `Authorization` header: `?expires=<unix s>&sig=<hex>` where `sig` is
//!   HMAC-SHA256 over the hash and the expiry, compared in constant time.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use crate::config::FilesConfig;
use crate::db::Db;
use crate::error::ApiError;

/// Path prefix of downloads; a file's URL is this plus its hash.
pub const URL_PREFIX: &str = "/api/v1/files/";

/// Bytes collected before the type is sniffed (enough for every `infer` matcher that
/// matters here, including the ZIP-based office formats).
const SNIFF_BYTES: usize = 8192;

/// A stored file, as the upload answers it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FileMeta {
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Type sniffed from the content.
    pub mime: String,
}

/// Why an upload or a signed URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Over the limit for its type (413).
    #[error("the file is over the limit of {limit} bytes{}", .mime.as_ref().map(|m| format!(" for {m}")).unwrap_or_default())]
    TooLarge {
        /// The limit that applied.
        limit: u64,
        /// The sniffed type, when known.
        mime: Option<String>,
    },
    /// A type not in `files.allowed_types` (415).
    #[error("files of type {0} are not allowed")]
    Unsupported(String),
    /// No bytes (422).
    #[error("the file is empty")]
    Empty,
    /// The request body broke off or was malformed (400); the text says how.
    #[error("upload interrupted: {0}")]
    Body(String),
    /// The signed URL's signature does not match (403).
    #[error("invalid signature")]
    BadSignature,
    /// The signed URL has expired (403).
    #[error("this signed URL has expired")]
    Expired,
    /// Disk trouble (500).
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
    /// Database trouble (500).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        use axum::http::StatusCode;
        let m = e.to_string();
        match e {
            FilesError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
            }
            FilesError::Unsupported(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            FilesError::Empty => ApiError::invalid("empty_file", m),
            FilesError::Body(_) => ApiError::bad_request("bad_multipart", m),
            FilesError::BadSignature => ApiError::forbidden("bad_signature", m),
            FilesError::Expired => ApiError::forbidden("url_expired", m),
            FilesError::Io(_) | FilesError::Db(_) => ApiError::internal(m),
        }
    }
}

/// The file store: directories, limits and the URL signing key.
pub struct FileStore {
    root: PathBuf,
    tmp: PathBuf,
    cfg: FilesConfig,
    secret: Vec<u8>,
    /// Hashes known to be stored (see [`FileStore::check_reference`]).
    known: parking_lot::RwLock<std::collections::HashSet<[u8; 32]>>,
}

/// Most hashes [`FileStore`] remembers as stored; past it, further ones cost a query per
/// reference (~48 MB of set at the limit).
pub const KNOWN_FILES_MAX: usize = 1_000_000;

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("root", &self.root)
            .finish()
    }
}

impl FileStore {
    /// Opens (creating) `<data_dir>/files`, removes temporary files a crash may have
    /// left, and loads the URL key: `files.url_secret`, else `<data_dir>/url_secret`,
    /// generated (mode 0600) on first start.
    ///
    /// # Errors
    /// When the directories or the key file cannot be created or read.
    pub fn open(data_dir: &Path, cfg: FilesConfig) -> std::io::Result<FileStore> {
        let root = data_dir.join("files");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let secret = if cfg.url_secret.is_empty() {
            load_or_create_secret(&data_dir.join("url_secret"))?
        } else {
            cfg.url_secret.as_bytes().to_vec()
        };
        Ok(FileStore {
            root,
            tmp,
            cfg,
            secret,
            known: parking_lot::RwLock::default(),
        })
    }

    /// Settings.
    pub fn config(&self) -> &FilesConfig {
        &self.cfg
    }

    /// Checks that a media message's `content` refers to an uploaded file.
    ///
    /// The frame dispatcher waits for this check, so a database round trip per media
    /// send would hold up every other user's messages behind it (as group sends did
    /// before BENCHMARKS.md's fix 25). Hashes uploaded through this process, or found
    /// in the database once, are answered from memory. Files are never deleted, so such
    /// an entry cannot go stale (a deletion, if one is ever added, must forget it here);
    /// anything else asks the database, which also finds files another instance stored.
    ///
    /// # Errors
    /// `file_not_found` (422) when it names no stored file; database failures.
    pub async fn check_reference(&self, db: &Db, content: &str) -> Result<(), ApiError> {
        let Some(sha) = referenced_sha(content) else {
            return Err(ApiError::invalid(
                "file_not_found",
                "media content must be the sha256 or /api/v1/files/<sha256> URL of an uploaded file",
            ));
        };
        if self.knows(sha) {
            return Ok(());
        }
        match lookup(db, sha).await? {
            Some(_) => {
                self.remember(sha);
                Ok(())
            }
            None => Err(ApiError::invalid(
                "file_not_found",
                "no uploaded file has this sha256",
            )),
        }
    }

    /// Whether `sha` (lowercase hex) is known to be stored.
    fn knows(&self, sha: &str) -> bool {
        known_key(sha).is_some_and(|k| self.known.read().contains(&k))
    }

    /// Remembers that `sha` is stored (up to [`KNOWN_FILES_MAX`] hashes).
    fn remember(&self, sha: &str) {
        if let Some(k) = known_key(sha) {
            let mut known = self.known.write();
            if known.len() < KNOWN_FILES_MAX {
                known.insert(k);
            }
        }
    }

    /// Where the content with hash `sha` (see [`is_sha256`]) lives, whether or not it
    /// exists.
    pub fn path_of(&self, sha: &str) -> PathBuf {
        self.root.join(sha.get(..2).unwrap_or("__")).join(sha)
    }

    /// The size limit for `mime`, or `None` when the type is not allowed.
    pub fn limit_for(&self, mime: &str) -> Option<u64> {
        if !self.cfg.allowed_types.iter().any(|p| type_matches(p, mime)) {
            return None;
        }
        let family = match mime.split('/').next() {
            Some("image") => self.cfg.max_image_bytes,
            Some("audio") => self.cfg.max_voice_bytes,
            Some("video") => self.cfg.max_video_bytes,
            _ => self.cfg.max_bytes,
        };
        Some(family.min(self.cfg.max_bytes))
    }

    /// Stores the bytes of `body`: streams them to a temporary file while hashing,
    /// sniffs the type from the first bytes, enforces the limits as it goes, then moves
    /// the file into place and records it. Identical content is kept once.
    ///
    /// # Errors
    /// [`FilesError::TooLarge`], [`FilesError::Unsupported`], [`FilesError::Empty`],
    /// the body's own errors as they are, or storage failures.
    /// In every case nothing of the upload is left on disk.
    pub async fn store<S>(&self, db: &Db, uploader: i64, body: S) -> Result<FileMeta, FilesError>
    where
        S: Stream<Item = Result<Bytes, FilesError>> + Unpin,
    {
        let (guard, file) = TempGuard::create(&self.tmp).await?;
        let mut w = Writer {
            file,
            hasher: Sha256::new(),
            size: 0,
        };
        let mut body = body;
        // Collect the head, sniff, then stream the rest straight to disk.
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut pending: Option<Bytes> = None;
        while head.len() < SNIFF_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                    if take < chunk.len() {
                        pending = Some(chunk.slice(take..));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if head.is_empty() {
            return Err(FilesError::Empty);
        }
        let mime = sniff(&head);
        let limit = self
            .limit_for(&mime)
            .ok_or_else(|| FilesError::Unsupported(mime.clone()))?;
        let too_large = |mime: &str| FilesError::TooLarge {
            limit,
            mime: Some(mime.to_owned()),
        };
        w.write(&head, limit)
            .await
            .map_err(|e| e.or(too_large(&mime)))?;
        if let Some(p) = pending {
            w.write(&p, limit)
                .await
                .map_err(|e| e.or(too_large(&mime)))?;
        }
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            w.write(&chunk, limit)
                .await
                .map_err(|e| e.or(too_large(&mime)))?;
        }
        w.file.flush().await?;
        w.file.sync_all().await?;
        drop(w.file);
        let sha = hex::encode(w.hasher.finalize());
        let size = i64::try_from(w.size).unwrap_or(i64::MAX);

        let dest = self.path_of(&sha);
        if tokio::fs::try_exists(&dest).await? {
            // Already stored: the guard removes our copy.
            drop(guard);
        } else {
            tokio::fs::create_dir_all(dest.parent().unwrap_or(&self.root)).await?;
            guard.commit_to(&dest).await?;
        }
        sqlx::query(
            "INSERT INTO files (sha256, size, mime, uploader_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&sha)
        .bind(size)
        .bind(&mime)
        .bind(uploader)
        .bind(crate::now_ms())
        .execute(&db.pool)
        .await?;
        self.remember(&sha);
        Ok(lookup(db, &sha).await?.unwrap_or(FileMeta {
            sha256: sha,
            size,
            mime,
        }))
    }

    /// The signature of a download of `sha` valid until `expires` (unix seconds).
    pub fn sign(&self, sha: &str, expires: i64) -> String {
        hex::encode(self.mac(sha, expires))
    }

    fn mac(&self, sha: &str, expires: i64) -> Vec<u8> {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(sha.as_bytes());
        m.update(b"\n");
        m.update(expires.to_string().as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// A signed, expiring download URL (path and query) for `sha`, and its expiry.
    pub fn signed_url(&self, sha: &str) -> (String, i64) {
        let expires = crate::now_ms() / 1000 + self.cfg.signed_url_ttl_secs;
        let sig = self.sign(sha, expires);
        (
            format!("{URL_PREFIX}{sha}?expires={expires}&sig={sig}"),
            expires,
        )
    }

    /// Checks a signed URL's `expires` and `sig` for `sha` at `now_s` (unix seconds).
    ///
    /// # Errors
    /// [`FilesError::BadSignature`] or [`FilesError::Expired`].
    pub fn verify(&self, sha: &str, expires: i64, sig: &str, now_s: i64) -> Result<(), FilesError> {
        let given = hex::decode(sig).map_err(|_| FilesError::BadSignature)?;
        let want = self.mac(sha, expires);
        if !bool::from(given.ct_eq(&want)) {
            return Err(FilesError::BadSignature);
        }
        if now_s > expires {
            return Err(FilesError::Expired);
        }
        Ok(())
    }
}

/// The metadata of a stored file, if any.
///
/// # Errors
/// Database failures.
pub async fn lookup(db: &Db, sha: &str) -> Result<Option<FileMeta>, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query("SELECT size, mime FROM files WHERE sha256 = $1")
        .bind(sha)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| {
        Ok(FileMeta {
            sha256: sha.to_owned(),
            size: r.try_get("size")?,
            mime: r.try_get("mime")?,
        })
    })
    .transpose()
}

/// Whether `s` is a file hash as we write them: 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The file a media message's `content` refers to: a bare hash, or a download URL
/// (`/api/v1/files/<sha256>`, absolute or relative, signed or not).
pub fn referenced_sha(content: &str) -> Option<&str> {
    let c = content.trim();
    if is_sha256(c) {
        return Some(c);
    }
    let path = c.split(['?', '#']).next().unwrap_or(c);
    let at = path.rfind(URL_PREFIX)?;
    let sha = &path[at + URL_PREFIX.len()..];
    is_sha256(sha).then_some(sha)
}

/// The 32 bytes of a hex SHA-256, as [`FileStore`] remembers it.
fn known_key(sha: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(sha, &mut key).ok().map(|()| key)
}

/// The type of content starting with `head`: its magic number, else `text/plain` for
/// UTF-8 text, else `application/octet-stream`.
pub fn sniff(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        return t.mime_type().to_owned();
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut by the end of the head is still text.
        Err(e) => e.error_len().is_none() && head.len() >= SNIFF_BYTES,
    };
    if text && !head.contains(&0) {
        "text/plain".to_owned()
    } else {
        "application/octet-stream".to_owned()
    }
}

/// Whether `mime` is covered by the allowed-types entry `pattern`.
fn type_matches(pattern: &str, mime: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => mime.starts_with(prefix),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

/// The temporary file being written, with its running hash and size.
struct Writer {
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

/// Outcome of a write that was refused: over the limit (`None`) or an I/O error.
struct WriteError(Option<std::io::Error>);

impl WriteError {
    fn or(self, too_large: FilesError) -> FilesError {
        match self.0 {
            Some(e) => FilesError::Io(e),
            None => too_large,
        }
    }
}

impl Writer {
    async fn write(&mut self, chunk: &[u8], limit: u64) -> Result<(), WriteError> {
        self.size += chunk.len() as u64;
        if self.size > limit {
            return Err(WriteError(None));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| WriteError(Some(e)))
    }
}

/// Owns a temporary file and removes it when dropped, unless it was moved into place.
///
/// Dropping happens on every early return and when the request future is dropped
/// because the client went away, so an interrupted upload leaves nothing behind.
/// Removing one directory entry is quick enough to do in `Drop` on a worker thread.
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    async fn create(dir: &Path) -> std::io::Result<(TempGuard, tokio::fs::File)> {
        let mut name = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut name);
        let path = dir.join(format!("{}.part", hex::encode(name)));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((TempGuard { path: Some(path) }, file))
    }

    /// Renames the file to `dest` (atomic on one filesystem); the guard is then done.
    async fn commit_to(mut self, dest: &Path) -> std::io::Result<()> {
        if let Some(p) = &self.path {
            tokio::fs::rename(p, dest).await?;
            self.path = None;
        }
        Ok(())
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove temporary upload");
                }
            }
        }
    }
}

/// Reads the URL key from `path`, or creates it (32 random bytes, hex, mode 0600).
fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("{} is shorter than 32 characters", path.display()),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let text = hex::encode(key);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            Ok(text.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e),
    }
}

/// A byte range of a file of `size` bytes, from a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole file (no header, or one we do not honour: several ranges or
    /// bad syntax — RFC 9110 lets a server ignore those).
    Full,
    /// Serve bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Not satisfiable (416).
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range against `size`.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        // Suffix: the last n bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Err(_) => RangeRequest::Full,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_stored_hashes_by_value() {
        let dir = std::env::temp_dir().join(format!(
            "mqim-files-known-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        let cfg = crate::config::Config::load(None).expect("defaults").files;
        let store = FileStore::open(&dir, cfg).expect("open");
        let sha = "ab".repeat(32);
        assert!(!store.knows(&sha));
        store.remember(&sha);
        assert!(store.knows(&sha));
        assert!(!store.knows(&"cd".repeat(32)));
        // Not hex, or not 32 bytes: never remembered, never known.
        for bad in ["xy".repeat(32), "ab".repeat(31), String::new()] {
            store.remember(&bad);
            assert!(!store.knows(&bad), "{bad}");
        }
        assert_eq!(store.known.read().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-3"), 10),
            Part { start: 0, end: 3 }
        );
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=-4"), 10), Part { start: 6, end: 9 });
        assert_eq!(
            parse_range(Some("bytes=-40"), 10),
            Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-400"), 10),
            Part { start: 2, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
    }

    #[test]
    fn references() {
        let sha = "ab".repeat(32);
        assert_eq!(referenced_sha(&sha), Some(sha.as_str()));
        let url = format!("/api/v1/files/{sha}");
        assert_eq!(referenced_sha(&url), Some(sha.as_str()));
        let signed = format!("https://chat.example/api/v1/files/{sha}?expires=1&sig=00");
        assert_eq!(referenced_sha(&signed), Some(sha.as_str()));
        assert_eq!(referenced_sha(&sha.to_uppercase()), None);
        assert_eq!(referenced_sha("/api/v1/files/abc"), None);
        assert_eq!(referenced_sha("hello"), None);
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"just some text"), "text/plain");
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(sniff(&elf), "application/x-executable");
        assert_eq!(sniff(&[0u8, 1, 2, 3, 200, 201]), "application/octet-stream");
    }

    #[test]
    fn patterns() {
        assert!(type_matches("image/*", "image/png"));
        assert!(!type_matches("image/*", "video/mp4"));
        assert!(type_matches("*", "application/x-executable"));
        assert!(type_matches("application/pdf", "application/pdf"));
        assert!(!type_matches("application/pdf", "application/pdfx"));
    }
}
