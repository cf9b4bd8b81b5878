use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{PeekError, Peeked, peek_until};

/// A connected pair on loopback: (client, server side).
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// A line parser: done at the first `\n` (with the line's length), invalid at a `!`.
/// Checks that every call sees more bytes than the last.
fn line() -> impl FnMut(&[u8]) -> Peeked<usize> {
    let mut last = 0;
    move |buf| {
        assert!(buf.len() > last, "called with {} bytes after {last}", buf.len());
        last = buf.len();
        if buf.contains(&b'!') {
            Peeked::Invalid("a bang")
        } else if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            Peeked::Done(i + 1)
        } else {
            Peeked::NeedMore
        }
    }
}

const LONG: Duration = Duration::from_secs(10);

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[tokio::test]
async fn data_in_several_writes_is_waited_for_and_stays_readable() {
    let (mut client, mut server) = pair().await;
    let writer = tokio::spawn(async move {
        for part in [&b"PRO"[..], b"XY ", b"rest\nand application data"] {
            client.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        client
    });
    let mut calls = 0;
    let mut parse = line();
    let n = peek_until(&server, 64, LONG, |b| {
        calls += 1;
        parse(b)
    })
    .await
    .unwrap();
    assert_eq!(n, 11);
    assert!(calls <= 3, "parse called {calls} times for three writes");
    drop(writer.await.unwrap());
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"PROXY rest\nand application data");
}

#[tokio::test]
async fn one_byte_at_a_time_is_never_missed() {
    let (mut client, mut server) = pair().await;
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            client.write_all(b"x").await.unwrap();
            tokio::task::yield_now().await;
        }
        client.write_all(b"\n").await.unwrap();
        client
    });
    let n = peek_until(&server, 1024, LONG, line()).await.unwrap();
    assert_eq!(n, 201);
    drop(writer.await.unwrap());
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all.len(), 201);
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let (_client, server) = pair().await;
    let started = Instant::now();
    let err = peek_until(&server, 64, Duration::from_millis(100), line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout { received: 0, .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_for_more_does_not_spin() {
    let (mut client, server) = pair().await;
    client.write_all(b"partial").await.unwrap();
    let cpu = thread_cpu();
    let err = peek_until(&server, 64, Duration::from_millis(300), line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout { received: 7, .. }), "{err:?}");
    let spent = thread_cpu() - cpu;
    assert!(spent < Duration::from_millis(100), "{spent:?} of CPU while waiting 300 ms");
}

#[tokio::test]
async fn end_of_stream_before_the_end_of_the_header() {
    let (mut client, server) = pair().await;
    client.write_all(b"part").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.shutdown().await.unwrap();
    let err = peek_until(&server, 64, LONG, line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Closed { received: 4 }), "{err:?}");

    let (client, server) = pair().await;
    drop(client);
    let err = peek_until(&server, 64, LONG, line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Closed { received: 0 }), "{err:?}");
}

#[tokio::test]
async fn data_and_end_of_stream_together() {
    let (mut client, server) = pair().await;
    client.write_all(b"all at once").await.unwrap();
    client.shutdown().await.unwrap();
    let err = peek_until(&server, 64, LONG, line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Closed { received: 11 }), "{err:?}");
}

#[tokio::test]
async fn more_than_max_without_an_end_is_too_large() {
    let (mut client, server) = pair().await;
    client.write_all(b"0123456789\n").await.unwrap();
    let err = peek_until(&server, 8, LONG, line()).await.unwrap_err();
    assert!(matches!(err, PeekError::TooLarge { max: 8 }), "{err:?}");

    // Exactly `max` bytes that complete the header are fine.
    let (mut client, server) = pair().await;
    client.write_all(b"0123456\n").await.unwrap();
    assert_eq!(peek_until(&server, 8, LONG, line()).await.unwrap(), 8);
}

#[tokio::test]
async fn invalid_bytes_end_the_wait_at_once() {
    let (mut client, server) = pair().await;
    client.write_all(b"ab").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.write_all(b"!").await.unwrap();
    let err = peek_until(&server, 64, LONG, line()).await.unwrap_err();
    assert!(matches!(err, PeekError::Invalid { reason: "a bang", received: 3 }), "{err:?}");
}
