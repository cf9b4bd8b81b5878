//! One request and its response on a [`Conn`], driven inside the request's task: [`send`]
//! writes the head (with the first body bytes, when they are at hand, in the same write)
//! and returns once the response head is read; the response [`Body`] then reads the rest.
//! Both keep sending the request body whenever they are polled, so a backend that answers
//! before it has read the whole body (a 413) or that echoes the body as it reads it is
//! served without a deadlock; an answer that ends before the request body has all been
//! sent ends the request body, and the connection is then not reused.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::Conn;
use super::codec::{self, Decoded, Decoder, ParseError, ReqFraming};
use crate::http::ClientBody;

/// Body frames up to this size are copied into the write buffer (one write with the head
/// or the chunk framing); larger ones are written from where they are.
const COPY_MAX: usize = 8 * 1024;
/// No more body frames are taken while this much is waiting to be written.
const WRITE_HIGH: usize = 16 * 1024;
/// The read buffer grows by this much when it is nearly full.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The backend's answer is not valid HTTP/1.1 (or over weir's limits).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Writing the request failed.
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed.
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    /// The backend closed the connection before a whole response head.
    #[error("the connection closed before a response head was read")]
    ClosedBeforeHead,
    /// The backend closed the connection before the response body's end.
    #[error("the connection closed before the end of the response body")]
    ClosedMidBody,
    /// The client's request body could not be read.
    #[error("client request body: {0}")]
    ClientBody(String),
    /// The request body is longer or shorter than its `Content-Length`.
    #[error("the request body does not match its Content-Length")]
    BodyLength,
    /// No response head came before the deadline (the pool's `response_timeout`).
    #[error("no response head within the response timeout")]
    Timeout,
}

impl Error {
    /// Whether the backend sent something that is not HTTP/1.1 (a `Protocol` health
    /// failure rather than a `Reset`).
    pub(crate) fn is_parse(&self) -> bool {
        matches!(self, Error::Parse(_))
    }
}

/// A failed [`send`]: the error, and the request when it may be sent again on a fresh
/// connection (the connection was reused, nothing of the response came back, and no
/// request body byte has been lost).
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: Error,
    pub(crate) request: Option<Request<ClientBody>>,
}

/// The state of one exchange: the connection (with the sending side's state, kept in
/// its box so that the exchange and the response body around it stay small to move) and
/// the request body still to send.
#[derive(Debug)]
struct Exchange {
    conn: Box<Conn>,
    body: ClientBody,
    /// The request body has ended (and its end is queued).
    body_done: bool,
    trailers_sent: bool,
    /// Everything queued has been flushed.
    flushed: bool,
    /// Some response byte was read.
    received: bool,
}

/// What one exchange's sending side has queued and written, in the connection's box
/// (set afresh by every [`send`]).
#[derive(Debug)]
pub(super) struct Sending {
    framing: ReqFraming,
    /// How much of `conn.write` is written.
    written: usize,
    /// A large body frame, written after `conn.write`.
    data: Bytes,
    /// How much of a chunk's closing CRLF is still to write after `data`.
    crlf: usize,
    /// Body frames taken, and the first one's bytes while it is the only one (so the
    /// request can be sent again).
    taken: u32,
    first: Option<Bytes>,
    /// Why sending stopped early (the response may still be read).
    send_error: Option<Error>,
}

impl Sending {
    /// Nothing queued, for a request framed so.
    pub(super) fn new(framing: ReqFraming) -> Self {
        Self { framing, written: 0, data: Bytes::new(), crlf: 0, taken: 0, first: None, send_error: None }
    }
}

/// Sends `req` on `conn` and reads the response head, which must come by `deadline` (else
/// [`Error::Timeout`]). With `reused`, a failure before any response byte that lost no
/// request body byte gives the request back.
pub(crate) async fn send(
    mut conn: Box<Conn>,
    reused: bool,
    req: Request<ClientBody>,
    deadline: Instant,
) -> Result<Response<Body>, SendError> {
    let (mut parts, body) = req.into_parts();
    let hint = if body.is_end_stream() { None } else { Some(body.size_hint()) };
    let framing = codec::encode_head(&mut parts, hint, &mut conn.write);
    let head_request = parts.method == Method::HEAD;
    conn.sending = Sending::new(framing);
    let mut ex = Exchange { conn, body, body_done: false, trailers_sent: false, flushed: false, received: false };
    if hint.is_none() {
        ex.end_body().map_err(|error| SendError { error, request: None })?;
    }
    let head = poll_fn(|cx| match ex.poll_head(cx, head_request) {
        Poll::Pending if ex.conn.poll_deadline(cx, deadline).is_ready() => Poll::Ready(Err(Error::Timeout)),
        polled => polled,
    });
    match head.await {
        Ok(head) => {
            let body = Body { decoder: Decoder::new(head.framing), keep_alive: head.keep_alive, failed: false, ex };
            Ok(Response::from_parts(head.parts, body))
        }
        Err(error) => {
            let again = reused
                && !ex.received
                && !matches!(error, Error::ClientBody(_) | Error::Timeout)
                && (ex.conn.sending.taken == 0 || (ex.conn.sending.taken == 1 && ex.conn.sending.first.is_some()));
            let request = again.then(|| {
                let mut body = ex.body;
                if let Some(first) = ex.conn.sending.first.take() {
                    body.give_back(first);
                }
                Request::from_parts(parts, body)
            });
            Err(SendError { error, request })
        }
    }
}

impl Exchange {
    /// Whether bytes wait to be written.
    fn pending(&self) -> bool {
        self.conn.sending.written < self.conn.write.len()
            || !self.conn.sending.data.is_empty()
            || self.conn.sending.crlf > 0
    }

    /// The request is all written and flushed.
    fn sent(&self) -> bool {
        self.body_done && self.flushed && !self.pending()
    }

    /// Queues one body frame.
    fn encode(&mut self, frame: Frame<Bytes>) -> Result<(), Error> {
        self.conn.sending.taken += 1;
        match frame.into_data() {
            Ok(data) => {
                self.conn.sending.first = (self.conn.sending.taken == 1).then(|| data.clone());
                if data.is_empty() {
                    return Ok(());
                }
                let len = data.len();
                match &mut self.conn.sending.framing {
                    ReqFraming::Length(left) => {
                        *left = left.checked_sub(len as u64).ok_or(Error::BodyLength)?;
                        self.queue(data);
                    }
                    ReqFraming::Chunked => {
                        let _ = write!(self.conn.write, "{len:x}\r\n");
                        if self.queue(data) {
                            self.conn.write.extend_from_slice(b"\r\n");
                        } else {
                            self.conn.sending.crlf = 2;
                        }
                    }
                }
            }
            Err(frame) => {
                self.conn.sending.first = None;
                if let (Ok(trailers), ReqFraming::Chunked) = (frame.into_trailers(), self.conn.sending.framing) {
                    self.conn.write.extend_from_slice(b"0\r\n");
                    codec::write_fields(&trailers, &mut self.conn.write);
                    self.conn.write.extend_from_slice(b"\r\n");
                    self.trailers_sent = true;
                }
            }
        }
        Ok(())
    }

    /// Queues body bytes: copied into the write buffer when small (true), else kept to
    /// be written from where they are.
    fn queue(&mut self, data: Bytes) -> bool {
        if data.len() <= COPY_MAX {
            self.conn.write.extend_from_slice(&data);
            true
        } else {
            self.conn.sending.data = data;
            false
        }
    }

    /// The request body ended: the last chunk, or a check that the length was met.
    fn end_body(&mut self) -> Result<(), Error> {
        self.body_done = true;
        match self.conn.sending.framing {
            ReqFraming::Length(0) => Ok(()),
            ReqFraming::Length(_) => Err(Error::BodyLength),
            ReqFraming::Chunked if self.trailers_sent => Ok(()),
            ReqFraming::Chunked => {
                self.conn.write.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
        }
    }

    /// Sends what it can of the request; ready when all of it is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while !self.body_done
                && self.conn.sending.data.is_empty()
                && self.conn.write.len() - self.conn.sending.written < WRITE_HIGH
            {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.end_body()?,
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Error::ClientBody(crate::http::error_chain(&e))));
                    }
                }
            }
            if self.pending() {
                ready!(self.poll_write_out(cx))?;
                continue;
            }
            if !self.flushed {
                ready!(Pin::new(&mut self.conn.io).poll_flush(cx)).map_err(Error::Write)?;
                self.flushed = true;
            }
            return if self.body_done { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
    }

    /// Writes everything queued.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.pending() {
            let head = &self.conn.write[self.conn.sending.written..];
            let crlf = &b"\r\n"[2 - self.conn.sending.crlf..];
            let data = &self.conn.sending.data;
            // The usual request is its head alone: written by send(2), not writev(2),
            // which costs the kernel more for one buffer (a file's position lock and the
            // iovec's copy: about 0.2 µs of system time a request, BENCHMARKS.md).
            let io = Pin::new(&mut self.conn.io);
            let mut n = if data.is_empty() && crlf.is_empty() {
                ready!(io.poll_write(cx, head))
            } else {
                let slices = [IoSlice::new(head), IoSlice::new(data), IoSlice::new(crlf)];
                ready!(io.poll_write_vectored(cx, &slices))
            }
            .map_err(Error::Write)?;
            if n == 0 {
                return Poll::Ready(Err(Error::Write(io::ErrorKind::WriteZero.into())));
            }
            self.flushed = false;
            let a = n.min(head.len());
            self.conn.sending.written += a;
            n -= a;
            let b = n.min(self.conn.sending.data.len());
            self.conn.sending.data.advance(b);
            n -= b;
            self.conn.sending.crlf -= n.min(self.conn.sending.crlf);
        }
        self.conn.write.clear();
        self.conn.sending.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Keeps sending the request unless it is sent or sending failed. A write failure is
    /// kept (the backend may have answered and closed: its answer is still read); only
    /// the client's body failing ends the exchange.
    fn poll_send_side(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.conn.sending.send_error.is_some() || self.sent() {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Err(e @ Error::ClientBody(_))) => Err(e),
            Poll::Ready(Err(e)) => {
                self.conn.sending.send_error = Some(e);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads more of the response into the read buffer: the bytes read, 0 at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = &mut self.conn.read;
        if read.capacity() - read.len() < 1024 {
            read.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, read))?;
        self.received |= n > 0;
        Poll::Ready(Ok(n))
    }

    /// Sends the request while reading the response head.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<codec::Head, Error>> {
        self.poll_send_side(cx)?;
        loop {
            if !self.conn.read.is_empty()
                && let Some(head) = codec::parse_head(&mut self.conn.read, head_request)?
            {
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(Error::ClosedBeforeHead)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(self.conn.sending.send_error.take().unwrap_or(Error::Read(e)))),
            }
        }
    }
}

/// A response body from an HTTP/1.1 backend; it keeps sending the request body too.
#[derive(Debug)]
pub(crate) struct Body {
    ex: Exchange,
    decoder: Decoder,
    keep_alive: bool,
    failed: bool,
}

impl Body {
    /// The next frame of the response body.
    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.decoder == Decoder::Done || self.failed {
            return Poll::Ready(None);
        }
        if let Err(e) = self.ex.poll_send_side(cx) {
            self.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.decoder.decode(&mut self.ex.conn.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(Decoded::End) => {
                    // The request's last bytes may still be queued: one more try.
                    let _ = self.ex.poll_send_side(cx);
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match ready!(self.ex.poll_fill(cx)) {
                Ok(0) if self.decoder == Decoder::Close => {
                    self.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(Error::ClosedMidBody)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(Error::Read(e))));
                }
            }
        }
    }

    /// Whether the body has ended.
    pub(crate) fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    /// The body's size hint (exact for a `Content-Length`).
    pub(crate) fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }

    /// The connection, if the exchange ended cleanly and it may carry another: the whole
    /// response read and nothing after it, the whole request sent, and neither side
    /// asking to close.
    pub(crate) fn into_reusable(self) -> Option<Box<Conn>> {
        let Body { ex, decoder, keep_alive, failed } = self;
        let clean = decoder == Decoder::Done
            && keep_alive
            && !failed
            && ex.body_done
            && !ex.pending()
            && ex.conn.sending.send_error.is_none()
            && ex.conn.read.is_empty();
        clean.then_some(ex.conn)
    }
}
