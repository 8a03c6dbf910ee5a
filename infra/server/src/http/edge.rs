//! The HTTP edge: the accept loop of every listener, and the screen each connection's bytes pass
//! through before hyper parses them.
//!
//! Must not: decide, route or answer anything but a malformed or over-limit request (those
//! answers are [`Problem`]s built in `problem.rs`).
//!
//! What it bounds (each limit is in [`EdgeLimits`], documented in `docs/http.md`, "Edge"):
//! - open connections: past `connections_max`, a new connection is answered at once with a 503
//!   `overloaded` problem and closed; it is never queued;
//! - the request head: at most `head_bytes_max` bytes, whole within `head_timeout` (from the
//!   connection's accept for its first request, from its first byte for later ones);
//! - the body: announced by `Content-Length` (no `Transfer-Encoding`), at most `body_bytes_max`
//!   bytes (a batch's: `batch_body_bytes_max`), checked before any of it is read, whole within
//!   `body_timeout` of its head;
//! - an idle keep-alive connection: closed after `idle_timeout` without a new request.
//! - an answer the client does not take (it stops reading): closed after `send_timeout`.
//!
//! How a malformed head is answered. hyper answers its own parse errors with a bare status and
//! no body, so hyper never sees a head the screen has not accepted. The [`Screen`] sits between
//! the socket and hyper and keeps HTTP/1.1 framing itself: it holds each request head back until
//! it is whole, parses it with `httparse` (the parser hyper uses, with hyper's defaults), checks
//! what hyper would refuse and what this API refuses (the target, `Content-Length`, header
//! bytes, the size), and only then releases the head, then exactly `Content-Length` bytes of
//! body, then screens the next head. A head it refuses never reaches hyper: the screen ends
//! hyper's input there (hyper sees a clean end of stream between requests, so it finishes the
//! answers it owes and closes), and writes the problem when hyper shuts the connection down,
//! after everything hyper wrote. It then closes its side and reads what the client still sends
//! for a short while, so the client reads the answer rather than a reset. This holds for every
//! request of a keep-alive connection, because every head is screened. hyper runs with
//! `half_close`, so it reads only when it wants a head or a body, never ahead: the screen's end
//! of input cannot cut an answer hyper owes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::Uri;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::{BATCH_BODY_BYTES_MAX, BODY_BYTES_MAX, Problem};

/// Open connections per listener.
pub const CONNECTIONS_MAX: usize = 4096;
/// Bytes of one request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// The largest `head_bytes_max` accepted: below hyper's own read buffer (about 400 KB), so a
/// head the screen accepts always fits hyper.
pub const HEAD_BYTES_LIMIT: usize = 256 * 1024;
/// Time for a request head to arrive whole.
pub const HEAD_TIMEOUT_MS: u64 = 10_000;
/// Time for a request body to arrive whole, from the end of its head.
pub const BODY_TIMEOUT_MS: u64 = 10_000;
/// Time a keep-alive connection may wait for its next request.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// Headers of one request (hyper's own limit).
pub const HEADERS_MAX: usize = 100;
/// Time an answer may wait for the client to take its bytes (a client that stops reading, or a
/// zero receive window): past it the connection is closed, so a reader that never reads cannot
/// hold a connection, its place under `connections_max`, or a shutdown.
pub const SEND_TIMEOUT_MS: u64 = 10_000;
/// After a refusal, how long the edge reads (and drops) what the client still sends before it
/// closes, and how much at most: closing with unread bytes would reset the connection, and the
/// client might lose the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Refused connections (over `connections_max`) that may linger at once; past it, a refused
/// connection gets its answer without lingering.
const REFUSALS_LINGERING_MAX: usize = 64;
/// Capacity of a connection's input buffer kept once it is empty.
const INPUT_KEPT_BYTES_MAX: usize = 4096;
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    pub connections_max: usize,
    pub head_bytes_max: usize,
    pub body_bytes_max: usize,
    /// The body limit of a batch (`POST /v1/batches`).
    pub batch_body_bytes_max: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            connections_max: CONNECTIONS_MAX,
            head_bytes_max: HEAD_BYTES_MAX,
            body_bytes_max: BODY_BYTES_MAX,
            batch_body_bytes_max: BATCH_BODY_BYTES_MAX,
            head_timeout: Duration::from_millis(HEAD_TIMEOUT_MS),
            body_timeout: Duration::from_millis(BODY_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS),
            send_timeout: Duration::from_millis(SEND_TIMEOUT_MS),
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true; then stops accepting, lets every
/// connection finish the request hyper is serving (connections between requests close at once),
/// and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_LINGERING_MAX));
    // Every connection task holds a receiver; `closed` completes when the last one is dropped.
    let (open, _) = watch::channel(());
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .half_close(true)
        .max_headers(HEADERS_MAX)
        // The screen times the head: it holds a head back until it is whole.
        .header_read_timeout(None);
    let service = TowerToHyperService::new(router);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            refuse(stream, peer, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let screen = Screen::new(stream, limits, stop.clone());
        let connection = builder.serve_connection(TokioIo::new(screen), service.clone());
        let mut stopping = stop.clone();
        let held = open.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async {
                    // The guard `wait_for` returns is not `Send`: drop it here.
                    let _ = stopping.wait_for(|stopped| *stopped).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(permit);
            drop(held);
        });
    }
    drop(listener);
    open.closed().await;
    Ok(())
}

/// Answers a connection over the limit with 503 `overloaded` and closes it, without reading a
/// request: the answer is the same whatever it asked.
fn refuse(mut stream: TcpStream, peer: SocketAddr, refusals: &Arc<Semaphore>) {
    let answer = problem_bytes(&Problem::overloaded(
        "too many open connections; retry later",
    ));
    tracing::debug!(%peer, "connection refused: too many open");
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        // Nothing was sent yet, so the socket buffer takes the whole answer.
        let _ = stream.try_write(&answer);
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            drain(&mut stream, 64 * 1024).await
        })
        .await;
        drop(permit);
    });
}

/// Reads and drops up to `max` bytes, until the peer closes.
async fn drain(stream: &mut TcpStream, max: u64) -> io::Result<()> {
    let mut sink = tokio::io::sink();
    tokio::io::copy(&mut tokio::io::AsyncReadExt::take(stream, max), &mut sink).await?;
    Ok(())
}

/// The bytes of an HTTP/1.1 answer carrying `problem`, closing the connection. The headers are
/// those `Problem`'s own response carries (`problem.rs`), plus `connection: close`.
fn problem_bytes(problem: &Problem) -> Vec<u8> {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let status = axum::http::StatusCode::from_u16(problem.status)
        .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("error"),
        body.len()
    )
    .into_bytes();
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        bytes.extend_from_slice(b"retry-after: 1\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&body);
    bytes
}

/// Where the screen is in the connection's HTTP/1.1 framing.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Between requests, no byte of the next one yet; `since` the last activity.
    Idle { since: Instant },
    /// Reading a head, `since` its first byte (or the accept, for the first request).
    Head { since: Instant },
    /// Releasing a body of `remaining` bytes, whose head ended at `since`.
    Body { remaining: u64, since: Instant },
    /// A head was refused: hyper's input has ended; the problem is written at shutdown.
    Refused,
}

/// What screening the unjudged bytes gave.
enum Judged {
    /// Some bytes were released to hyper.
    Released,
    /// More bytes are needed to judge.
    NeedMore,
    /// The head is refused with this problem.
    Refused(Problem),
}

/// A connection's bytes on their way to hyper: see the module doc.
pub struct Screen {
    stream: TcpStream,
    limits: EdgeLimits,
    stop: watch::Receiver<bool>,
    /// Bytes read and not yet handed to hyper: `input[..released]` are accepted, the rest not
    /// yet judged.
    input: Vec<u8>,
    released: usize,
    /// How far `input[released..]` was searched for the end of a head.
    searched: usize,
    frame: Frame,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    /// The answer to a refused head, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    lingered: u64,
    linger_until: Option<Instant>,
    /// Since when a write has been waiting for the client to take bytes, and its timer.
    send_stalled: Option<Instant>,
    send_timer: Pin<Box<Sleep>>,
}

impl Screen {
    fn new(stream: TcpStream, limits: EdgeLimits, stop: watch::Receiver<bool>) -> Screen {
        let now = Instant::now();
        let deadline = now + limits.head_timeout;
        Screen {
            stream,
            limits,
            stop,
            input: Vec::new(),
            released: 0,
            searched: 0,
            frame: Frame::Head { since: now },
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_at: deadline,
            answer: None,
            lingered: 0,
            linger_until: None,
            send_stalled: None,
            send_timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// After a write or flush answered `sent`: a write that waits starts (or keeps) the send
    /// timer, and one past `send_timeout` fails the connection; progress resets it.
    fn send_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        sent: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if sent.is_ready() {
            self.send_stalled = None;
            return sent;
        }
        let since = *self.send_stalled.get_or_insert_with(|| {
            let now = Instant::now();
            self.send_timer
                .as_mut()
                .reset(now + self.limits.send_timeout);
            now
        });
        if self.send_timer.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                waited_ms = since.elapsed().as_millis() as u64,
                "client does not take its answer; closing"
            );
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    /// When the current frame times out.
    fn deadline(&self) -> Option<Instant> {
        match self.frame {
            Frame::Idle { since } => Some(since + self.limits.idle_timeout),
            Frame::Head { since } => Some(since + self.limits.head_timeout),
            Frame::Body { since, .. } => Some(since + self.limits.body_timeout),
            Frame::Refused => None,
        }
    }

    /// Polls the timer at `deadline`; ready once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if deadline != self.timer_at {
            self.timer.as_mut().reset(deadline);
            self.timer_at = deadline;
        }
        self.timer.as_mut().poll(cx)
    }

    /// Judges the bytes after `released` according to the frame.
    fn judge(&mut self) -> Judged {
        let unjudged = self.input.len() - self.released;
        if unjudged == 0 {
            return Judged::NeedMore;
        }
        match self.frame {
            Frame::Refused => Judged::NeedMore,
            Frame::Body { remaining, since } => {
                let taken = remaining.min(unjudged as u64);
                self.released += taken as usize;
                self.frame = if taken == remaining {
                    Frame::Idle {
                        since: Instant::now(),
                    }
                } else {
                    Frame::Body {
                        remaining: remaining - taken,
                        since,
                    }
                };
                Judged::Released
            }
            Frame::Idle { .. } | Frame::Head { .. } => {
                if let Frame::Idle { .. } = self.frame {
                    self.frame = Frame::Head {
                        since: Instant::now(),
                    };
                }
                self.judge_head()
            }
        }
    }

    fn judge_head(&mut self) -> Judged {
        let unjudged = &self.input[self.released..];
        // A head ends with an empty line; parse only once one may have arrived.
        let from = self.searched.saturating_sub(3);
        let ended = unjudged[from..]
            .windows(2)
            .any(|pair| pair == b"\n\n" || pair == b"\n\r");
        self.searched = unjudged.len();
        if !ended {
            return if unjudged.len() > self.limits.head_bytes_max {
                Judged::Refused(head_too_large(self.limits.head_bytes_max))
            } else {
                Judged::NeedMore
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        let head_bytes = match request.parse(unjudged) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            Ok(httparse::Status::Partial) if unjudged.len() > self.limits.head_bytes_max => {
                return Judged::Refused(head_too_large(self.limits.head_bytes_max));
            }
            Ok(httparse::Status::Partial) => return Judged::NeedMore,
            Err(error) => {
                return Judged::Refused(Problem::invalid(format!(
                    "malformed request head: {error}"
                )));
            }
        };
        if head_bytes > self.limits.head_bytes_max {
            return Judged::Refused(head_too_large(self.limits.head_bytes_max));
        }
        // The path without its query: `?receipts=true` is the same route.
        let path = request
            .path
            .map(|target| target.split_once('?').map_or(target, |(path, _)| path));
        let body_bytes_max = if path == Some(allot_client::wire::BATCH_PATH) {
            self.limits.batch_body_bytes_max
        } else {
            self.limits.body_bytes_max
        };
        match body_length(&request, body_bytes_max) {
            Ok(length) => {
                self.released += head_bytes;
                self.searched = 0;
                let now = Instant::now();
                self.frame = if length == 0 {
                    Frame::Idle { since: now }
                } else {
                    Frame::Body {
                        remaining: length,
                        since: now,
                    }
                };
                Judged::Released
            }
            Err(problem) => Judged::Refused(problem),
        }
    }

    /// Refuses the head being read: hyper's input ends, the answer waits for the shutdown.
    fn refuse(&mut self, problem: &Problem) {
        tracing::debug!(status = problem.status, detail = %problem.detail, "request head refused");
        self.frame = Frame::Refused;
        self.input.truncate(self.released);
        self.answer = Some((problem_bytes(problem), 0));
    }
}

fn head_too_large(head_bytes_max: usize) -> Problem {
    Problem::invalid(format!("request head larger than {head_bytes_max} bytes"))
}

/// Checks what hyper would refuse with a bare status, and what this API refuses, in a whole head;
/// returns the body's length.
fn body_length(request: &httparse::Request<'_, '_>, body_bytes_max: usize) -> Result<u64, Problem> {
    let target = request.path.unwrap_or_default();
    if Uri::try_from(target).is_err() {
        return Err(Problem::invalid("the request target is not a valid URI"));
    }
    let mut length = None;
    for header in request.headers.iter() {
        // httparse refuses control bytes; bytes past ASCII are obsolete (RFC 9110) and no header
        // of this API has them.
        if !header.value.is_ascii() {
            return Err(Problem::invalid(format!(
                "header {} has bytes that are not ASCII",
                header.name
            )));
        }
        if header.name.len() >= 1 << 16 {
            return Err(Problem::invalid("a header name of 65,536 bytes or more"));
        }
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Problem::invalid(
                "Transfer-Encoding is not accepted: send the body with Content-Length",
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Problem::invalid("more than one Content-Length header"));
            }
            let digits = header.value;
            let parsed = std::str::from_utf8(digits)
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok());
            match parsed {
                Some(value) => length = Some(value),
                None => return Err(Problem::invalid("Content-Length must be a decimal number")),
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > body_bytes_max as u64 {
        return Err(Problem::too_large(format!(
            "request body of {length} bytes; at most {body_bytes_max}"
        )));
    }
    Ok(length)
}

impl AsyncRead for Screen {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.released > 0 {
                let handed = this.released.min(buf.remaining());
                buf.put_slice(&this.input[..handed]);
                this.input.drain(..handed);
                this.released -= handed;
                if this.input.is_empty() && this.input.capacity() > INPUT_KEPT_BYTES_MAX {
                    // An idle connection keeps no large buffer.
                    this.input = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Frame::Refused = this.frame {
                return Poll::Ready(Ok(()));
            }
            match this.judge() {
                Judged::Released => continue,
                Judged::Refused(problem) => {
                    this.refuse(&problem);
                    return Poll::Ready(Ok(()));
                }
                Judged::NeedMore => {}
            }
            let between_requests = !matches!(this.frame, Frame::Body { .. });
            if between_requests && *this.stop.borrow() {
                // Shutting down: nothing of this request reached hyper; end its input.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.input.extend_from_slice(read.filled()),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    let Some(deadline) = this.deadline() else {
                        return Poll::Pending;
                    };
                    ready!(this.poll_deadline(cx, deadline));
                    return match this.frame {
                        Frame::Body { .. } => {
                            tracing::debug!("request body timed out");
                            Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request body timed out",
                            )))
                        }
                        // Nothing of the next request reached hyper: a clean end of input.
                        _ => {
                            tracing::debug!("request head or idle connection timed out");
                            this.frame = Frame::Refused;
                            Poll::Ready(Ok(()))
                        }
                    };
                }
            }
        }
    }
}

impl AsyncWrite for Screen {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Frame::Idle { .. } = self.frame {
            // Writing an answer is activity: the idle time starts after it.
            self.frame = Frame::Idle {
                since: Instant::now(),
            };
        }
        let sent = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.send_progress(cx, sent)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Frame::Idle { .. } = self.frame {
            self.frame = Frame::Idle {
                since: Instant::now(),
            };
        }
        let sent = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.send_progress(cx, sent)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.send_progress(cx, flushed)
    }

    /// Writes the answer to a refused head (after everything hyper wrote), closes this side,
    /// then lingers: reads and drops what the client still sends, for a bounded time and size.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some((answer, mut written)) = this.answer.take() else {
            return Pin::new(&mut this.stream).poll_shutdown(cx);
        };
        while written < answer.len() {
            let sent = Pin::new(&mut this.stream).poll_write(cx, &answer[written..]);
            let sent = match this.send_progress(cx, sent) {
                Poll::Ready(sent) => sent,
                Poll::Pending => {
                    this.answer = Some((answer, written));
                    return Poll::Pending;
                }
            }?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            written += sent;
        }
        this.answer = Some((answer, written));
        if this.linger_until.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.linger_until = Some(Instant::now() + LINGER);
        }
        let until = this.linger_until.unwrap_or_else(Instant::now);
        loop {
            if this.lingered >= LINGER_BYTES_MAX {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.lingered += read.filled().len() as u64,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    ready!(this.poll_deadline(cx, until));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}
