//! Attachments end to end (issue 7): streamed upload, dedupe, download with ETag and
//! ranges, signed URLs, limits and types, interrupted uploads, media messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use mqim_proto::{ClientFrame, Format, MsgType, ServerFrame};
use mqim_tests::http::assert_error;
use mqim_tests::{start_server, start_server_with, Server, WAIT};
use reqwest::header;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `n` bytes that `infer` sniffs as PNG: the signature, then pseudo-random bytes
/// (varied by `seed` so different tests get different content).
fn png(n: usize, seed: u64) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push((x >> 24) as u8);
    }
    v.truncate(n);
    v
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Uploads `bytes` as the multipart part `file`; returns status and JSON body.
async fn upload(s: &Server, token: Option<&str>, bytes: Vec<u8>) -> (u16, Value) {
    let form = Form::new().part("file", Part::bytes(bytes).file_name("upload.bin"));
    send_form(s, token, form).await
}

async fn send_form(s: &Server, token: Option<&str>, form: Form) -> (u16, Value) {
    let mut req = s
        .http
        .client
        .post(format!("{}/api/v1/files", s.base))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("upload request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GET of `path` (with query) with optional token and extra headers.
async fn get(
    s: &Server,
    path: &str,
    token: Option<&str>,
    headers: &[(header::HeaderName, &str)],
) -> reqwest::Response {
    let mut req = s.http.client.get(format!("{}{}", s.base, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    req.send().await.expect("download request")
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every regular file under `<data_dir>/files`, the temporary directory included.
fn stored_files(s: &Server) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.data_dir.path().join("files"), &mut out);
    out.sort();
    out
}

fn header_of(r: &reqwest::Response, h: header::HeaderName) -> &str {
    r.headers()
        .get(&h)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {h} header"))
}

#[tokio::test]
async fn round_trip_dedupe_etag_ranges_and_restart() {
    let mut s = start_server().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let data = png(300 * 1024 + 7, 1);
    let sha = sha_hex(&data);

    let (st, up) = upload(&s, Some(&a.token), data.clone()).await;
    assert_eq!(st, 201, "{up}");
    assert_eq!(up["sha256"], sha.as_str());
    assert_eq!(up["url"], format!("/api/v1/files/{sha}"));
    assert_eq!(up["size"], data.len() as i64);
    assert_eq!(up["mime"], "image/png");
    assert!(up["signed_url"].as_str().unwrap().contains("sig="));
    let on_disk = stored_files(&s);
    assert_eq!(
        on_disk,
        [s.data_dir.path().join("files").join(&sha[..2]).join(&sha)]
    );

    // Byte for byte, by another user, with the right headers.
    let r = get(&s, &format!("/api/v1/files/{sha}"), Some(&b.token), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header_of(&r, header::CONTENT_TYPE), "image/png");
    assert_eq!(
        header_of(&r, header::CONTENT_LENGTH),
        data.len().to_string()
    );
    assert_eq!(header_of(&r, header::ETAG), format!("\"{sha}\""));
    assert_eq!(header_of(&r, header::ACCEPT_RANGES), "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    // The same content again: the same answer and still one file.
    let (st, again) = upload(&s, Some(&b.token), data.clone()).await;
    assert_eq!(st, 201, "{again}");
    assert_eq!(
        (&again["url"], &again["sha256"]),
        (&up["url"], &up["sha256"])
    );
    assert_eq!(stored_files(&s), on_disk);

    // ETag revalidation.
    let etag = format!("\"{sha}\"");
    let r = get(
        &s,
        &format!("/api/v1/files/{sha}"),
        Some(&a.token),
        &[(header::IF_NONE_MATCH, &etag)],
    )
    .await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());

    // Ranges: a middle slice, a suffix, an open end, and one past the end.
    let path = format!("/api/v1/files/{sha}");
    let r = get(
        &s,
        &path,
        Some(&a.token),
        &[(header::RANGE, "bytes=1000-1999")],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        header_of(&r, header::CONTENT_RANGE),
        format!("bytes 1000-1999/{}", data.len())
    );
    assert_eq!(header_of(&r, header::CONTENT_LENGTH), "1000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    let r = get(&s, &path, Some(&a.token), &[(header::RANGE, "bytes=-10")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[data.len() - 10..]);
    let from = data.len() - 5000;
    let r = get(
        &s,
        &path,
        Some(&a.token),
        &[(header::RANGE, &format!("bytes={from}-"))],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[from..]);
    let past = format!("bytes={}-", data.len());
    let r = get(&s, &path, Some(&a.token), &[(header::RANGE, &past)]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        header_of(&r, header::CONTENT_RANGE),
        format!("bytes */{}", data.len())
    );
    // Several ranges are answered with the whole file (allowed by RFC 9110).
    let r = get(
        &s,
        &path,
        Some(&a.token),
        &[(header::RANGE, "bytes=0-1,5-6")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());

    // Files and signed URLs survive a restart (the URL key is kept, private).
    let signed = up["signed_url"].as_str().unwrap().to_owned();
    s.restart().await;
    let r = get(&s, &signed, None, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data_dir.path().join("url_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn limits_types_and_bad_requests_leave_nothing_on_disk() {
    let s = start_server_with(&[
        ("MQIM_FILES__MAX_BYTES", "200000"),
        ("MQIM_FILES__MAX_IMAGE_BYTES", "50000"),
    ])
    .await;
    let a = s.register("alice").await;

    // Over the overall limit (UTF-8 text), and over the image limit.
    let r = upload(&s, Some(&a.token), "é".repeat(150_000).into_bytes()).await;
    assert_error(&r, 413, "too_large");
    assert!(stored_files(&s).is_empty(), "{:?}", stored_files(&s));
    let r = upload(&s, Some(&a.token), png(60_000, 2)).await;
    assert_error(&r, 413, "too_large");
    assert!(stored_files(&s).is_empty(), "{:?}", stored_files(&s));
    // Exactly at the image limit is fine.
    let r = upload(&s, Some(&a.token), png(50_000, 3)).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(stored_files(&s).len(), 1);

    // An executable is not an allowed type, whatever its name says.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0x90);
    let form = Form::new().part(
        "file",
        Part::bytes(elf)
            .file_name("cat.png")
            .mime_str("image/png")
            .unwrap(),
    );
    assert_error(
        &send_form(&s, Some(&a.token), form).await,
        415,
        "unsupported_media_type",
    );
    assert_eq!(stored_files(&s).len(), 1);

    // No token; a form without a `file` part; not multipart at all; an empty file.
    assert_error(&upload(&s, None, png(100, 4)).await, 401, "unauthorized");
    let form = Form::new().text("note", "no file here");
    assert_error(
        &send_form(&s, Some(&a.token), form).await,
        422,
        "missing_file",
    );
    let r = s
        .http
        .post("/api/v1/files", &a.token, json!({"file": "abc"}))
        .await;
    assert_error(&r, 400, "bad_multipart");
    assert_error(
        &upload(&s, Some(&a.token), Vec::new()).await,
        422,
        "empty_file",
    );
    // Other parts before `file` are skipped.
    let form = Form::new()
        .text("caption", "hello")
        .part("file", Part::bytes(b"plain text".to_vec()));
    let r = send_form(&s, Some(&a.token), form).await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["mime"], "text/plain");
    assert_eq!(stored_files(&s).len(), 2);
}

#[tokio::test]
async fn allowed_types_are_configurable() {
    let s = start_server_with(&[("MQIM_FILES__ALLOWED_TYPES", "[\"image/*\"]")]).await;
    let a = s.register("alice").await;
    assert_eq!(upload(&s, Some(&a.token), png(1000, 5)).await.0, 201);
    let r = upload(&s, Some(&a.token), b"a text file".to_vec()).await;
    assert_error(&r, 415, "unsupported_media_type");
    assert_eq!(stored_files(&s).len(), 1);
}

#[tokio::test]
async fn downloads_need_a_token_or_a_valid_unexpired_signature() {
    let s = start_server_with(&[("MQIM_FILES__SIGNED_URL_TTL_SECS", "2")]).await;
    let a = s.register("alice").await;
    let data = png(5000, 6);
    let (_, up) = upload(&s, Some(&a.token), data.clone()).await;
    let sha = up["sha256"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/files/{sha}");

    assert_error(
        &error_of(get(&s, &path, None, &[]).await).await,
        401,
        "unauthorized",
    );
    assert_error(
        &error_of(get(&s, &path, Some("mqim_not-a-real-token"), &[]).await).await,
        401,
        "unauthorized",
    );
    // Unknown and malformed hashes.
    let unknown = format!("/api/v1/files/{}", "0".repeat(64));
    assert_error(
        &error_of(get(&s, &unknown, Some(&a.token), &[]).await).await,
        404,
        "file_not_found",
    );
    assert_error(
        &error_of(get(&s, "/api/v1/files/../../etc/passwd", Some(&a.token), &[]).await).await,
        404,
        "not_found",
    );
    assert_error(
        &error_of(get(&s, "/api/v1/files/xyz", Some(&a.token), &[]).await).await,
        404,
        "file_not_found",
    );

    // A fresh signed URL from the endpoint works without a token …
    let r = s.http.get(&format!("{path}/signed-url"), &a.token).await;
    assert_eq!(r.0, 200, "{}", r.1);
    let signed = r.1["url"].as_str().unwrap().to_owned();
    assert!(r.1["expires_at"].as_i64().unwrap() > 0);
    let r = get(&s, &signed, None, &[(header::RANGE, "bytes=0-99")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..100]);
    // … but not with a changed signature, expiry or file.
    let tampered = format!("{}0", &signed[..signed.len() - 1]);
    let tampered = if tampered == signed {
        format!("{}1", &signed[..signed.len() - 1])
    } else {
        tampered
    };
    assert_error(
        &error_of(get(&s, &tampered, None, &[]).await).await,
        403,
        "bad_signature",
    );
    let (_, query) = signed.split_once('?').unwrap();
    let later: String = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("expires", e)) => format!("expires={}", e.parse::<i64>().unwrap() + 3600),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    assert_error(
        &error_of(get(&s, &format!("{path}?{later}"), None, &[]).await).await,
        403,
        "bad_signature",
    );
    let (_, other) = upload(&s, Some(&a.token), png(5000, 7)).await;
    let other_path = other["url"].as_str().unwrap();
    assert_error(
        &error_of(get(&s, &format!("{other_path}?{query}"), None, &[]).await).await,
        403,
        "bad_signature",
    );
    assert_error(
        &error_of(get(&s, &format!("{path}?expires=abc&sig=00"), None, &[]).await).await,
        400,
        "bad_query",
    );
    // The signed URL of the upload answer works too, until it expires (TTL 2 s).
    let from_upload = up["signed_url"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = get(&s, &from_upload, None, &[]).await;
        if r.status() == 200 {
            assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
            assert!(
                tokio::time::Instant::now() < deadline,
                "signed URL never expired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_error(&error_of(r).await, 403, "url_expired");
        break;
    }
    // An expired URL is refused for good; a token still works.
    assert_error(
        &error_of(get(&s, &signed, None, &[]).await).await,
        403,
        "url_expired",
    );
    assert_eq!(get(&s, &path, Some(&a.token), &[]).await.status(), 200);
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_file_store_it_once() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let data = png(1024 * 1024, 8);
    let sha = sha_hex(&data);
    let answers =
        futures::future::join_all((0..8).map(|_| upload(&s, Some(&a.token), data.clone()))).await;
    for (st, body) in &answers {
        assert_eq!(*st, 201, "{body}");
        assert_eq!(body["sha256"], sha.as_str());
        assert_eq!(body["size"], data.len() as i64);
    }
    assert_eq!(stored_files(&s).len(), 1, "{:?}", stored_files(&s));
    let r = get(&s, &format!("/api/v1/files/{sha}"), Some(&a.token), &[]).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn an_interrupted_upload_leaves_no_partial_file() {
    let s = start_server().await;
    let a = s.register("alice").await;
    let tmp = s.data_dir.path().join("files").join("tmp");
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let head = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.png\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
        .to_vec();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(head), Ok(png(64 * 1024, 9)), Ok(vec![7u8; 64 * 1024])];
    // The body sends the start of a file, waits until the test has seen it on disk,
    // then breaks off.
    let body = futures::stream::iter(chunks).chain(futures::stream::once(async move {
        let _ = go_rx.await;
        Err(std::io::Error::other("client gave up"))
    }));
    let req = s
        .http
        .client
        .post(format!("{}/api/v1/files", s.base))
        .bearer_auth(&a.token)
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let sender = tokio::spawn(req);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let partial = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if partial {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go_tx.send(()).unwrap();
    assert!(sender.await.unwrap().is_err(), "the request should fail");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stored_files(&s).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partial upload left behind: {:?}",
            stored_files(&s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn media(cmid: &str, to: i64, msg_type: MsgType, content: &str) -> ClientFrame {
    ClientFrame::Send {
        client_msg_id: cmid.into(),
        to_user: Some(to),
        to_group: None,
        msg_type,
        content: content.into(),
        reply_to: None,
    }
}

#[tokio::test]
async fn media_messages_must_refer_to_an_uploaded_file() {
    let mut s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut c = s.mqtt(&a, Some("phone")).await;
    assert_eq!(
        c.subscribe_ok(&[&format!("im/u/{}/in/json", a.id)]).await,
        [true]
    );

    let missing = "f".repeat(64);
    for (i, content) in [missing.as_str(), "/api/v1/files/abc", "cat.png"]
        .iter()
        .enumerate()
    {
        c.send_frame(
            a.id,
            Format::Json,
            &media(&format!("bad-{i}"), b.id, MsgType::Image, content),
        )
        .await;
        let (_, f) = c
            .recv_frame_where(|f| matches!(f, ServerFrame::Error { .. }))
            .await;
        let ServerFrame::Error {
            code,
            client_msg_id,
            ..
        } = f
        else {
            unreachable!()
        };
        assert_eq!(code, "file_not_found");
        assert_eq!(client_msg_id.as_deref(), Some(format!("bad-{i}").as_str()));
    }

    let (_, up) = upload(&s, Some(&a.token), png(2000, 10)).await;
    let url = up["url"].as_str().unwrap();
    let sha = up["sha256"].as_str().unwrap();
    let signed = up["signed_url"].as_str().unwrap();
    for (i, (t, content)) in [
        (MsgType::Image, url),
        (MsgType::File, sha),
        (MsgType::Video, signed),
    ]
    .into_iter()
    .enumerate()
    {
        let cmid = format!("ok-{i}");
        c.send_frame(a.id, Format::Json, &media(&cmid, b.id, t, content))
            .await;
        let (_, f) = c
            .recv_frame_where(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await;
        assert!(
            matches!(&f, ServerFrame::Ack { client_msg_id, .. } if *client_msg_id == cmid),
            "{f:?}"
        );
    }
    // Text is not checked; REST sends follow the same rule.
    let r = s
        .http
        .post(
            "/api/v1/messages",
            &a.token,
            json!({"client_msg_id": "rest-1", "to_user": b.id, "msg_type": "voice", "content": missing}),
        )
        .await;
    assert_error(&r, 422, "file_not_found");

    // After a restart (nothing remembered in memory) a file stored before is still
    // found, twice over; a missing one is still refused.
    let sha = sha.to_owned();
    drop(c);
    s.restart().await;
    let mut c = s.mqtt(&a, Some("phone")).await;
    assert_eq!(
        c.subscribe_ok(&[&format!("im/u/{}/in/json", a.id)]).await,
        [true]
    );
    for (cmid, content, ok) in [
        ("again-1", sha.as_str(), true),
        ("again-2", sha.as_str(), true),
        ("again-3", missing.as_str(), false),
    ] {
        c.send_frame(
            a.id,
            Format::Json,
            &media(cmid, b.id, MsgType::Image, content),
        )
        .await;
        let (_, f) = c
            .recv_frame_where(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await;
        match f {
            ServerFrame::Ack { client_msg_id, .. } => {
                assert!(ok, "{cmid} acked");
                assert_eq!(client_msg_id, cmid);
            }
            ServerFrame::Error {
                code,
                client_msg_id,
                ..
            } => {
                assert!(!ok, "{cmid}: {code}");
                assert_eq!(code, "file_not_found");
                assert_eq!(client_msg_id.as_deref(), Some(cmid));
            }
            f => panic!("{f:?}"),
        }
    }
}

#[tokio::test]
async fn openapi_documents_the_file_endpoints() {
    let s = start_server().await;
    let doc = s
        .http
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await
        .1;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths["/api/v1/files"].get("post").is_some(), "{doc}");
    assert!(paths["/api/v1/files/{sha256}"].get("get").is_some());
    assert!(paths["/api/v1/files/{sha256}/signed-url"]
        .get("get")
        .is_some());
}
