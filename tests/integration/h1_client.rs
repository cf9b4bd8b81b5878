//! weir's own HTTP/1.1 client against backends scripted byte by byte on raw sockets:
//! response framing (chunked with trailers, until close, HEAD and 304 with a length and
//! no body, interim 100), full duplex (an early 413 to a large upload, a 32 MiB echo),
//! keep-alive (a kept connection the backend closed, a reused one that fails before
//! answering), and bad heads (garbage, too large, too many headers → 502).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support;

/// A backend whose every connection runs `script` (with the connection's number, from
/// 0); counts the connections it accepted.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(s, n));
            }
        });
        Self { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads one request head from `s` (what follows it stays in `buf`); `None` at the end.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of header `name` in a raw head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// weir with one pool in front of `backend`. One worker: the connections the backend
/// counts are those of one idle pool (each worker keeps its own).
async fn weir(backend: SocketAddr) -> weir::Server {
    let text = support::config_text(&[backend], "");
    support::start(&format!("{text}\n[runtime]\nworker_threads = 1\n")).await
}

fn within<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_trailers_passes_and_its_connection_is_kept() {
    let backend = Scripted::start(|mut s, _| async move {
        let mut buf = Vec::new();
        while read_head(&mut s, &mut buf).await.is_some() {
            let res = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\nx-other: 1\r\n\r\n";
            s.write_all(res.as_bytes()).await.unwrap();
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let client = support::client();
    for _ in 0..3 {
        let req = Request::get(format!("http://{}/t", server.addr("main").unwrap()))
            .header("te", "trailers")
            .body(support::empty())
            .unwrap();
        let res = within(client.request(req)).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("the trailers reached the client");
        assert_eq!(collected.to_bytes(), "hello world");
        assert_eq!(trailers["x-sum"], "11");
        assert!(!trailers.contains_key("x-other"), "only the trailers the response announced: {trailers:?}");
    }
    assert_eq!(backend.accepted(), 1, "one kept connection served every request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_delimited_by_close_is_read_to_the_end_and_not_reused() {
    let backend = Scripted::start(|mut s, n| async move {
        let mut buf = Vec::new();
        if read_head(&mut s, &mut buf).await.is_some() {
            // No length, no chunking: the body ends when the connection does. The second
            // is HTTP/1.0 without keep-alive, the same.
            let version = if n % 2 == 0 { "1.1" } else { "1.0" };
            let head = format!("HTTP/{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            for i in 0..50 {
                s.write_all(format!("line {i} {}\n", "x".repeat(1000)).as_bytes()).await.unwrap();
            }
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let client = support::client();
    for _ in 0..2 {
        let url = format!("http://{}/c", server.addr("main").unwrap());
        let (status, body) = within(support::get(&client, &url)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.lines().count(), 50, "the whole body");
        assert!(body.ends_with(&format!("line 49 {}\n", "x".repeat(1000))));
    }
    assert_eq!(backend.accepted(), 2, "a connection that ended its body by closing is not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_to_a_large_upload_reaches_the_client() {
    let backend = Scripted::start(|mut s, n| async move {
        let mut buf = Vec::new();
        let Some(head) = read_head(&mut s, &mut buf).await else { return };
        if n == 0 {
            // Refused on sight of the head, the body left unread, the connection held open
            // (a client that sent the whole body before reading would wait forever).
            assert_eq!(header(&head, "content-length"), Some("67108864"), "{head}");
            let res = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
            s.write_all(res.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        } else {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let proxy = server.addr("main").unwrap();
    // 64 MiB: far more than the socket buffers between client, weir and backend hold.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let upload = async {
        let head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 67108864\r\n\r\n";
        wr.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..1024 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let answer = async {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
            if raw.ends_with(b"too large") {
                break;
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::select! {
        raw = within(answer) => raw.expect("the 413 arrived while the upload was still being sent"),
        () = async { upload.await; std::future::pending::<()>().await } => unreachable!(),
    };
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.ends_with("too large"), "{raw}");
    // The refused connection is not kept: the next request gets a new one.
    let url = format!("http://{proxy}/next");
    let (status, body) = within(support::get(&support::client(), &url)).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_body_echoed_as_it_is_read_passes_full_duplex() {
    // 32 MiB: more than the socket buffers between weir and the backend hold.
    const LEN: usize = 32 * 1024 * 1024;
    let backend = Scripted::start(|mut s, _| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
            // The answer starts before the body is read, and each piece read is written
            // back at once.
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes()).await.unwrap();
            let mut left = len;
            let first = buf.len().min(left);
            s.write_all(&buf[..first]).await.unwrap();
            buf.drain(..first);
            left -= first;
            let mut chunk = vec![0u8; 32 * 1024];
            while left > 0 {
                let n = s.read(&mut chunk[..left.min(32 * 1024)]).await.unwrap();
                assert!(n > 0, "the request body ended early");
                s.write_all(&chunk[..n]).await.unwrap();
                left -= n;
            }
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let proxy = server.addr("main").unwrap();
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let body = Bytes::from(body);
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let sent = body.clone();
    let upload = async move {
        let head = format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {LEN}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        for piece in sent.chunks(64 * 1024) {
            wr.write_all(piece).await.unwrap();
        }
    };
    let download = async {
        let mut raw = Vec::with_capacity(LEN + 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut body_at = None;
        loop {
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "weir closed early after {} bytes", raw.len());
            raw.extend_from_slice(&chunk[..n]);
            if body_at.is_none() {
                body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            }
            if body_at.is_some_and(|at| raw.len() - at >= LEN) {
                return (raw, body_at.unwrap());
            }
        }
    };
    let ((), (raw, at)) = within(async { tokio::join!(upload, download) }).await.expect("no deadlock");
    let head = String::from_utf8_lossy(&raw[..at]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(raw.len() - at, LEN);
    assert!(raw[at..] == body[..], "the echo is the body, byte for byte");
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_backend_closed_is_not_used_and_the_next_request_succeeds() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let backend = Scripted::start(move |mut s, _| {
        let closed = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut s, &mut buf).await.is_some() {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").await.unwrap();
            }
            // Kept alive as far as weir knows, then closed by the backend.
            drop(s);
            let _ = closed.send(());
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let url = format!("http://{}/k", server.addr("main").unwrap());
    let client = support::client();
    for i in 0..3 {
        let (status, body) = within(support::get(&client, &url)).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "first"), "request {i}");
        within(closed_rx.recv()).await.unwrap();
        // The FIN reaches weir's idle socket.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.accepted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_that_closes_without_answering_is_retried_on_a_new_one() {
    let backend = Scripted::start(|mut s, n| async move {
        let mut buf = Vec::new();
        if n == 0 {
            // The first connection answers one request, then closes on reading the next
            // without a word (as a backend whose idle timeout fires as it arrives does).
            read_head(&mut s, &mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none").await.unwrap();
            let _ = read_head(&mut s, &mut buf).await;
            return;
        }
        while read_head(&mut s, &mut buf).await.is_some() {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo").await.unwrap();
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let url = format!("http://{}/r", server.addr("main").unwrap());
    let client = support::client();
    let (status, body) = within(support::get(&client, &url)).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one"));
    let (status, body) = within(support::get(&client, &url)).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "two"), "sent again on a new connection");
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_oversized_or_crowded_response_head_gets_a_502_saying_so() {
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", b"SMTP ready\r\n\r\n".to_vec(), "malformed response head"),
        (
            "huge",
            format!("HTTP/1.1 200 OK\r\nx-pad: {}\r\n", "p".repeat(70_000)).into_bytes(),
            "larger than 65536 bytes",
        ),
        (
            "crowded",
            {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..200 {
                    head.extend_from_slice(format!("x-h-{i}: v\r\n").as_bytes());
                }
                head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                head
            },
            "more than 128 headers",
        ),
        (
            "lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            "Content-Length",
        ),
    ];
    for (what, answer, reason) in cases {
        let answer = Arc::new(answer);
        let backend = Scripted::start(move |mut s, _| {
            let answer = answer.clone();
            async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_some() {
                    let _ = s.write_all(&answer).await;
                    // Held open: weir must give up on its own limits, not on a close.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        })
        .await;
        let server = weir(backend.addr).await;
        let url = format!("http://{}/bad", server.addr("main").unwrap());
        let (status, body) = within(support::get(&support::client(), &url)).await.expect(what);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
        assert!(body.contains(&backend.addr.to_string()), "{what}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_304_answers_with_a_content_length_have_no_body() {
    let backend = Scripted::start(|mut s, _| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            let res: &[u8] = if head.starts_with("HEAD ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
            } else if head.starts_with("GET /cached ") {
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
            };
            s.write_all(res).await.unwrap();
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let base = format!("http://{}", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..2 {
        let req = Request::builder().method(Method::HEAD).uri(format!("{base}/file")).body(support::empty()).unwrap();
        let res = within(client.request(req)).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-length"], "1234");
        assert!(res.into_body().collect().await.unwrap().to_bytes().is_empty());

        let req =
            Request::get(format!("{base}/cached")).header("if-none-match", "\"v1\"").body(support::empty()).unwrap();
        let res = within(client.request(req)).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()["etag"], "\"v1\"");
        assert!(res.into_body().collect().await.unwrap().to_bytes().is_empty());

        let (status, body) = within(support::get(&client, &format!("{base}/next"))).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "next"));
    }
    assert_eq!(backend.accepted(), 1, "no body was waited for: the one connection served all six");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_continue_and_103_are_skipped_for_the_final_answer() {
    let backend = Scripted::start(|mut s, _| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut s, &mut buf).await {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
            while buf.len() < len {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: Vec<u8> = buf.drain(..len).collect();
            s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n").await.unwrap();
            let text = format!("got {}", String::from_utf8_lossy(&body));
            let res = format!("HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{text}", text.len());
            s.write_all(res.as_bytes()).await.unwrap();
        }
    })
    .await;
    let server = weir(backend.addr).await;
    let client = support::client();
    for _ in 0..2 {
        let body =
            Full::new(Bytes::from_static(b"payload")).map_err(|e: Infallible| -> hyper::Error { match e {} }).boxed();
        let req = Request::post(format!("http://{}/c", server.addr("main").unwrap())).body(body).unwrap();
        let res = within(client.request(req)).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(!res.headers().contains_key("link"), "the interim answer's fields stay out");
        assert_eq!(support::body_text(res).await, "got payload");
    }
    assert_eq!(backend.accepted(), 1);
}

/// The response timeout on a kept connection, whose timer an earlier exchange set: a
/// request that gets no answer still gets its 504 at `response_timeout` (not before, and
/// not at some older deadline's multiple), and the connection is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_that_stops_answering_gets_a_504_at_the_response_timeout() {
    let backend = Scripted::start(|mut s, n| async move {
        let mut buf = Vec::new();
        let mut answered = 0;
        while read_head(&mut s, &mut buf).await.is_some() {
            // The first connection answers three requests and then stalls, holding the
            // connection open; later ones answer everything.
            if n == 0 && answered == 3 {
                let mut rest = [0u8; 64];
                while s.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                return;
            }
            answered += 1;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        }
    })
    .await;
    let text = support::config_text(&[backend.addr], "response_timeout_ms = 400");
    let server = support::start(&format!("{text}\n[runtime]\nworker_threads = 1\n")).await;
    let url = format!("http://{}/t", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..3 {
        let (status, body) = within(support::get(&client, &url)).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        // Each exchange's deadline is later than the one before.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(backend.accepted(), 1, "one kept connection so far");
    let started = std::time::Instant::now();
    let (status, body) = within(support::get(&client, &url)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(took >= Duration::from_millis(400), "the 504 came before the response timeout: {took:?}");
    assert!(took < Duration::from_millis(2000), "the 504 came {took:?} after the request");
    // The timed-out connection is closed, not kept: the next request opens another.
    let (status, body) = within(support::get(&client, &url)).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(backend.accepted(), 2);
}
