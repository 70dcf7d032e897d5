//! One client connection: bytes to frames, frames to request tasks, responses back to bytes.
//!
//! Reading. An idle connection holds a 4 KiB receive buffer; one that receives more than that at
//! once switches to a 256 KiB buffer, charged to the memory budget and given back after 200 ms
//! without data. Whole frames are copied into 16-byte aligned frame buffers of their own (so a
//! Produce request's record runs are validated in place and appended with one copy) and each runs
//! as a task. A frame of 64 KiB or more is read straight into its own buffer, which grows (and is
//! charged) as its bytes arrive, never from the size its header claims. Frame buffers are reused
//! (up to 4 MiB per connection), since a fresh large buffer costs a page fault per page.
//!
//! Limits. The connection is not read while `connection_inflight_max` requests are in flight
//! (read and not yet answered on the wire) or while it holds `connection_bytes_max` bytes of
//! frames and queued responses, or while the broker's memory budget has no room for its next
//! buffer: a client that never reads its responses is pushed back by TCP. A frame must arrive
//! whole within `frame_read_timeout_ms` of its first byte; a connection that completes no request
//! for `idle_timeout_ms` while nothing is in flight, or whose responses cannot be written for that
//! long, is closed.
//!
//! Writing. One writer task drains the responses in the order they completed, coalescing small
//! ones into one write and writing fetched record runs straight from the segment mappings.
//!
//! A frame that cannot be delimited (too large, too short) closes only this connection, after an
//! error response when its header can be read. A frame that is delimited but not understood gets
//! an error response and the connection goes on. A request whose handler panics is answered
//! `Internal`; the connection goes on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use rkyv::util::AlignedVec;

use super::budget::Charge;
use super::response::Outgoing;
use super::{handler, Session, Shared};
use crate::protocol::{self, ApiKey, DecodeError, ErrorCode, FrameBuffers, HEADER_LEN};
use crate::runtime::{self, TcpListener, TcpStream};
use crate::shard::Shard;
use crate::storage::{Io, SegmentMap, Slice};

/// The receive buffer of a connection with nothing to read.
const RECV_SMALL_BYTES: usize = 4 << 10;
/// The receive buffer of a busy connection (charged to the budget).
const RECV_BIG_BYTES: usize = 256 << 10;
/// A busy connection's receive buffer is given back after this long without data.
const RECV_BIG_RELEASE: Duration = Duration::from_millis(200);
/// Frames at least this large are read straight into their own buffer.
const LARGE_FRAME_BYTES: usize = 64 << 10;
/// A large frame's buffer starts at this size (or the frame's, if smaller) and doubles.
const FRAME_CHUNK_BYTES: usize = 64 << 10;
/// Coalesce queued small responses up to this many bytes per write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Bytes of frame buffers kept for reuse per connection.
const FRAME_POOL_BYTES_MAX: usize = 4 << 20;
/// What an open connection costs besides its buffers (task, state, socket, the small receive
/// buffer), charged at accept.
pub(crate) const CONNECTION_FIXED_BYTES: usize = 16 << 10;
/// How long a connection over `connections_max` may take to send the header the `Busy` answer
/// echoes.
const BUSY_HEADER_WAIT: Duration = Duration::from_secs(1);

/// A request frame in an aligned buffer of its own, and the memory charged for it.
struct Frame {
    buf: AlignedVec<16>,
    len: usize,
    charge: Charge,
}

/// A connection's state shared by its reader, its request tasks and its writer.
struct Conn<M: SegmentMap> {
    /// Requests read and not yet answered on the wire.
    inflight: Cell<usize>,
    /// Bytes charged for in-flight frames and queued responses.
    bytes: Cell<usize>,
    /// A request finished or a response was written: the reader may go on.
    changed: Event,
    queue: RefCell<VecDeque<(Outgoing<M>, Charge)>>,
    queued: Event,
    /// No more responses will be queued.
    closed: Cell<bool>,
    /// Writing failed: responses are dropped, the connection ends.
    broken: Cell<bool>,
}

impl<M: SegmentMap> Conn<M> {
    fn new() -> Self {
        Conn {
            inflight: Cell::new(0),
            bytes: Cell::new(0),
            changed: Event::new(),
            queue: RefCell::new(VecDeque::new()),
            queued: Event::new(),
            closed: Cell::new(false),
            broken: Cell::new(false),
        }
    }

    fn start(&self, bytes: usize) {
        self.inflight.set(self.inflight.get() + 1);
        self.bytes.set(self.bytes.get() + bytes);
    }

    fn release(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() - bytes);
        self.changed.notify(usize::MAX);
    }

    /// A request finished with nothing to send.
    fn done(&self) {
        self.inflight.set(self.inflight.get() - 1);
        self.changed.notify(usize::MAX);
    }

    fn push(&self, out: Outgoing<M>, charge: Charge) {
        if self.broken.get() {
            drop((out, charge));
            self.done();
            return;
        }
        self.bytes.set(self.bytes.get() + charge.bytes());
        self.queue.borrow_mut().push_back((out, charge));
        self.queued.notify(1);
    }

    /// A queued response was written (or dropped).
    fn sent(&self, charge: Charge) {
        self.bytes.set(self.bytes.get() - charge.bytes());
        drop(charge);
        self.done();
    }

    /// Waits until `ready()` holds or the connection broke.
    async fn wait_until(&self, ready: impl Fn(&Self) -> bool) {
        loop {
            let l = self.changed.listen();
            if ready(self) || self.broken.get() {
                return;
            }
            l.await;
        }
    }
}

/// Accepts Levee connections on one listener.
pub(crate) async fn accept_loop<I: Io>(
    listener: TcpListener,
    shard: Rc<Shard<I>>,
    shared: Arc<Shared>,
) {
    accept_each(listener, shard, shared, serve, |stream| {
        runtime::spawn_isolated("busy answer", answer_busy(stream))
    })
    .await
}

/// Accepts on `listener` and runs `serve` for each connection within `connections_max` (summed
/// over every shard and listener) and the memory budget, holding its fixed charge and counting
/// it in the shard's stats; a connection over either limit goes to `refuse`. A panic in `serve`
/// closes that connection only.
pub(crate) async fn accept_each<I: Io, F>(
    listener: TcpListener,
    shard: Rc<Shard<I>>,
    shared: Arc<Shared>,
    serve: impl Fn(TcpStream, Rc<Shard<I>>, Arc<Shared>) -> F,
    refuse: impl Fn(TcpStream),
) where
    F: std::future::Future<Output = ()> + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                runtime::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open: usize = shared
            .stats
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum();
        let fixed = (open < shared.config.connections_max)
            .then(|| shared.budget.try_charge(CONNECTION_FIXED_BYTES))
            .flatten();
        let Some(fixed) = fixed else {
            tracing::warn!(
                open,
                limit = shared.config.connections_max,
                memory_used = shared.budget.used(),
                "connection refused: limit reached"
            );
            refuse(stream);
            continue;
        };
        let stats = shard.stats.clone();
        stats.connections.fetch_add(1, Ordering::AcqRel);
        let connection = serve(stream, shard.clone(), shared.clone());
        runtime::spawn_detached(async move {
            if let Err(message) = runtime::isolated(connection).await {
                tracing::error!(%message, "connection task panicked; connection closed");
            }
            drop(fixed);
            stats.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Answers the first request of a connection over the limit with `Busy`, then closes it.
async fn answer_busy(mut stream: TcpStream) {
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    let deadline = Instant::now() + BUSY_HEADER_WAIT;
    while have < HEADER_LEN {
        match runtime::until(deadline, stream.read(&mut header[have..])).await {
            Some(Ok(n)) if n > 0 => have += n,
            _ => return,
        }
    }
    if let Ok(h) = protocol::request_header(&header) {
        let mut out = Vec::new();
        protocol::encode_error(
            &mut out,
            h.api_key,
            h.correlation_id,
            ErrorCode::Busy,
            "the broker is at its connection limit; retry later",
        );
        let _ = runtime::until(deadline, stream.write_all(&out)).await;
    }
    let _ = stream.close().await;
}

/// Why reading stopped.
enum Stop {
    Eof,
    Timeout(&'static str),
    Shutdown,
    Io(std::io::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Eof => write!(f, "closed by the client"),
            Stop::Timeout(what) => write!(f, "{what} passed"),
            Stop::Shutdown => write!(f, "the broker is shutting down"),
            Stop::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The receive buffer: bytes `start..end` of `buf` are read and not yet cut into frames.
struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Charged while the buffer is big.
    charge: Charge,
}

impl RecvBuf {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_big(&self) -> bool {
        self.buf.len() > RECV_SMALL_BYTES
    }

    /// Moves the unread bytes to the front and makes room for a read: a full small buffer
    /// becomes a big one (waiting for budget room until `deadline`).
    async fn make_room(&mut self, deadline: Instant) -> Result<(), Stop> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            debug_assert!(
                !self.is_big(),
                "a big buffer always holds a whole small frame"
            );
            runtime::until(deadline, self.charge.grow_to(RECV_BIG_BYTES))
                .await
                .ok_or(Stop::Timeout("memory budget"))?;
            self.buf.resize(RECV_BIG_BYTES, 0);
        }
        Ok(())
    }

    /// Back to the small buffer, giving the big one's memory back.
    fn shrink(&mut self) {
        debug_assert_eq!(self.start, self.end);
        self.buf = vec![0; RECV_SMALL_BYTES];
        (self.start, self.end) = (0, 0);
        self.charge.shrink_to(0);
    }
}

/// Connection limits, from the configuration.
struct Limits {
    frame_max: usize,
    inflight_max: usize,
    bytes_max: usize,
    frame_read_timeout: Duration,
    idle_timeout: Duration,
}

async fn serve<I: Io>(stream: TcpStream, shard: Rc<Shard<I>>, shared: Arc<Shared>) {
    let config = &shared.config;
    let limits = Limits {
        frame_max: config.frame_bytes_max,
        inflight_max: config.connection_inflight_max,
        bytes_max: config.connection_bytes_max,
        frame_read_timeout: Duration::from_millis(config.frame_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let _ = stream.set_nodelay(true);
    // A client that stops reading its responses holds a writer at most this long.
    let _ = stream.set_write_timeout(Some(limits.idle_timeout));
    let session = Rc::new(Session::new(stream.peer_addr().ok(), shard.id));
    let (mut rd, wr) = futures_lite::io::split(stream);
    let conn = Rc::new(Conn::<I::Map>::new());
    let writer = runtime::spawn(write_loop(wr, conn.clone()));
    let pool = Rc::new(RefCell::new(FrameBuffers::<Charge>::new(
        FRAME_POOL_BYTES_MAX,
    )));
    let alarm = Rc::new(Alarm::new());
    let watcher = runtime::spawn(watch(alarm.clone(), shared.clone()));
    let ctx = Ctx {
        shard: &shard,
        shared: &shared,
        session: &session,
        conn: &conn,
        pool: &pool,
        limits: &limits,
        alarm: &alarm,
    };
    let stop = ctx.read_loop(&mut rd).await;
    drop(watcher);
    match &stop {
        Stop::Eof | Stop::Shutdown => {}
        other => {
            tracing::debug!(session = session.id, peer = ?session.peer, reason = %other, "closing connection")
        }
    }
    // Let every request already read finish and its response be written.
    conn.wait_until(|c| c.inflight.get() == 0).await;
    conn.closed.set(true);
    conn.queued.notify(1);
    let _ = writer.await;
    pool.borrow_mut().clear();
}

/// What the reader of one connection works with.
struct Ctx<'a, I: Io> {
    shard: &'a Rc<Shard<I>>,
    shared: &'a Arc<Shared>,
    session: &'a Rc<Session>,
    conn: &'a Rc<Conn<I::Map>>,
    pool: &'a Rc<RefCell<FrameBuffers<Charge>>>,
    limits: &'a Limits,
    alarm: &'a Rc<Alarm>,
}

/// A connection's read deadline, watched by one timer task for the life of the connection
/// ([`watch`]) rather than a timer set up for every read that has to wait: the reader moves the
/// deadline with a store and waits on `rung`, which the watcher notifies when the deadline passes
/// or the broker shuts down.
struct Alarm {
    deadline: Cell<Instant>,
    /// The deadline moved earlier (or was renewed after ringing): the watcher re-arms.
    moved: Event,
    rung: Event,
}

impl Alarm {
    fn new() -> Alarm {
        Alarm {
            deadline: Cell::new(Instant::now() + Duration::from_secs(3600)),
            moved: Event::new(),
            rung: Event::new(),
        }
    }

    fn set(&self, deadline: Instant) {
        let old = self.deadline.replace(deadline);
        // A later deadline needs nothing: the watcher wakes at the old one and sleeps again.
        if deadline < old || old <= Instant::now() {
            self.moved.notify(usize::MAX);
        }
    }
}

/// Rings `alarm` when its deadline passes (until it is moved again) or when the broker shuts down.
async fn watch(alarm: Rc<Alarm>, shared: Arc<Shared>) {
    loop {
        let moved = alarm.moved.listen();
        let deadline = alarm.deadline.get();
        if Instant::now() >= deadline {
            alarm.rung.notify(usize::MAX);
            future::or(moved, shared.shutdown.wait()).await;
            if shared.shutdown.is_set() {
                alarm.rung.notify(usize::MAX);
                return;
            }
            continue;
        }
        let shutdown = future::or(
            async {
                runtime::sleep_until(deadline).await;
                false
            },
            future::or(
                async {
                    moved.await;
                    false
                },
                async {
                    shared.shutdown.wait().await;
                    true
                },
            ),
        )
        .await;
        if shutdown {
            alarm.rung.notify(usize::MAX);
            return;
        }
    }
}

impl<I: Io> Ctx<'_, I> {
    async fn read_loop(&self, rd: &mut ReadHalf<TcpStream>) -> Stop {
        let budget = &self.shared.budget;
        let mut rx = RecvBuf {
            buf: vec![0; RECV_SMALL_BYTES],
            start: 0,
            end: 0,
            charge: Charge::none(budget),
        };
        let mut last_request = Instant::now();
        // When the first byte of the frame now partly in the buffer arrived.
        let mut partial_since: Option<Instant> = None;
        loop {
            let mut dispatched = false;
            loop {
                match protocol::frame_len(rx.data(), self.limits.frame_max) {
                    Ok(Some(len)) => {
                        let frame = match self.small_frame(&rx.data()[..len]).await {
                            Ok(f) => f,
                            Err(stop) => return stop,
                        };
                        rx.start += len;
                        self.dispatch(frame);
                        dispatched = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.reject(rx.data(), &e);
                        return Stop::Io(std::io::Error::other(e.to_string()));
                    }
                }
            }
            let now = Instant::now();
            if dispatched {
                last_request = now;
            }
            partial_since = match (rx.start == rx.end, partial_since) {
                (true, _) => None,
                // The partial frame after whole ones began in the last read.
                (false, Some(_)) if dispatched => Some(now),
                (false, since) => since.or(Some(now)),
            };
            if let Some(size) = large_frame_size(rx.data(), self.limits.frame_max) {
                let deadline = partial_since.unwrap_or(now) + self.limits.frame_read_timeout;
                let frame = match self.large_frame(rd, &mut rx, size, deadline).await {
                    Ok(f) => f,
                    Err(stop) => return stop,
                };
                self.dispatch(frame);
                last_request = Instant::now();
                partial_since = None;
                continue;
            }
            // Wait until this connection may hold more.
            let (inflight_max, bytes_max) = (self.limits.inflight_max, self.limits.bytes_max);
            let room = self
                .conn
                .wait_until(|c| c.inflight.get() < inflight_max && c.bytes.get() < bytes_max);
            if self.until_shutdown(room).await.is_none() || self.conn.broken.get() {
                return Stop::Shutdown;
            }
            let deadline = match partial_since {
                Some(since) => since + self.limits.frame_read_timeout,
                None if self.conn.inflight.get() == 0 => last_request + self.limits.idle_timeout,
                // Not idle while requests are in flight (a long poll may outlast the timeout).
                None => Instant::now() + self.limits.idle_timeout,
            };
            if let Err(stop) = rx.make_room(deadline).await {
                return stop;
            }
            // A big buffer with nothing in it goes back to the budget after a short while.
            let release = (rx.is_big() && rx.start == rx.end)
                .then(|| Instant::now() + RECV_BIG_RELEASE)
                .filter(|&r| r < deadline);
            let read = rd.read(&mut rx.buf[rx.end..]);
            match self.read_until(release.unwrap_or(deadline), read).await {
                Ok(0) => return Stop::Eof,
                Ok(n) => rx.end += n,
                Err(Stop::Timeout(_)) if release.is_some() => rx.shrink(),
                Err(Stop::Timeout(_)) if partial_since.is_some() => {
                    return Stop::Timeout("frame_read_timeout_ms")
                }
                Err(Stop::Timeout(_)) => return Stop::Timeout("idle_timeout_ms"),
                Err(stop) => return stop,
            }
        }
    }

    /// Runs `f` until it completes or shutdown is requested (`None`).
    async fn until_shutdown<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        future::or(async { Some(f.await) }, async {
            self.shared.shutdown.wait().await;
            None
        })
        .await
    }

    async fn read_until(
        &self,
        deadline: Instant,
        read: impl std::future::Future<Output = std::io::Result<usize>>,
    ) -> Result<usize, Stop> {
        let mut read = std::pin::pin!(read);
        // Bytes already waiting in the socket: nothing to set up. This is the common case while a
        // client streams (a read costs a non-blocking recv first).
        if let Some(done) = future::poll_once(read.as_mut()).await {
            return done.map_err(Stop::Io);
        }
        // Otherwise wait for the read or for the connection's alarm (deadline or shutdown): one
        // listener, no timer of its own (see `Alarm`).
        self.alarm.set(deadline);
        loop {
            let rung = self.alarm.rung.listen();
            if self.shared.shutdown.is_set() {
                return Err(Stop::Shutdown);
            }
            if Instant::now() >= deadline {
                return Err(Stop::Timeout("read"));
            }
            let woken = future::or(async { Some(read.as_mut().await) }, async {
                rung.await;
                None
            });
            if let Some(done) = woken.await {
                return done.map_err(Stop::Io);
            }
        }
    }

    /// A buffer of at least `len` bytes from the pool, or newly charged (waiting for room).
    async fn buffer(
        &self,
        len: usize,
        deadline: Instant,
    ) -> Result<(AlignedVec<16>, Charge), Stop> {
        let spare = self.pool.borrow_mut().take_spare();
        let (mut buf, mut charge) =
            spare.unwrap_or_else(|| (AlignedVec::new(), Charge::none(&self.shared.budget)));
        if buf.len() < len {
            runtime::until(deadline, charge.grow_to(len))
                .await
                .ok_or(Stop::Timeout("memory budget"))?;
            buf.resize(len, 0);
        }
        Ok((buf, charge))
    }

    /// A whole small frame, copied from the receive buffer into a frame buffer of its own.
    async fn small_frame(&self, bytes: &[u8]) -> Result<Frame, Stop> {
        let deadline = Instant::now() + self.limits.frame_read_timeout;
        let (mut buf, charge) = self.buffer(bytes.len(), deadline).await?;
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Frame {
            buf,
            len: bytes.len(),
            charge,
        })
    }

    /// Reads a large frame of `size` bytes straight into its own buffer, which grows as its bytes
    /// arrive: a header claiming 64 MiB costs nothing until the bytes come.
    async fn large_frame(
        &self,
        rd: &mut ReadHalf<TcpStream>,
        rx: &mut RecvBuf,
        size: usize,
        deadline: Instant,
    ) -> Result<Frame, Stop> {
        let head = rx.end - rx.start;
        let first = size.min(FRAME_CHUNK_BYTES.max(head));
        let (mut buf, mut charge) = self.buffer(first, deadline).await?;
        buf[..head].copy_from_slice(rx.data());
        rx.start = rx.end;
        let mut have = head;
        while have < size {
            if buf.len() == have {
                let grown = size.min(buf.len() * 2);
                runtime::until(deadline, charge.grow_to(grown))
                    .await
                    .ok_or(Stop::Timeout("memory budget"))?;
                buf.resize(grown, 0);
            }
            let end = size.min(buf.len());
            let read = rd.read(&mut buf[have..end]);
            match self.read_until(deadline, read).await {
                Ok(0) => return Err(Stop::Eof),
                Ok(n) => have += n,
                Err(Stop::Timeout(_)) => return Err(Stop::Timeout("frame_read_timeout_ms")),
                Err(stop) => return Err(stop),
            }
        }
        Ok(Frame {
            buf,
            len: size,
            charge,
        })
    }

    /// Runs one request as a task of its own.
    fn dispatch(&self, mut frame: Frame) {
        self.conn.start(frame.charge.bytes());
        let (shard, shared, session, conn, pool) = (
            self.shard.clone(),
            self.shared.clone(),
            self.session.clone(),
            self.conn.clone(),
            self.pool.clone(),
        );
        runtime::spawn_detached(async move {
            shard.stats.requests.fetch_add(1, Ordering::Relaxed);
            let bytes = &mut frame.buf[..frame.len];
            let header = protocol::request_header(bytes);
            let started = Instant::now();
            let handled =
                runtime::isolated(handler::handle(&shard, &shared, &session, bytes)).await;
            if let Some(key) = header
                .as_ref()
                .ok()
                .and_then(|h| ApiKey::from_u16(h.api_key))
            {
                shared.metrics.request_done(key, started.elapsed());
            }
            let out = match (handled, header) {
                (Ok(out), _) => out,
                (Err(message), Ok(h)) => {
                    shard.stats.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = session.id, api_key = h.api_key, %message, "request handler panicked; answered Internal");
                    let mut f = Vec::new();
                    protocol::encode_error(
                        &mut f,
                        h.api_key,
                        h.correlation_id,
                        ErrorCode::Internal,
                        &format!("internal error: {message}"),
                    );
                    Some(Outgoing::Frame(f))
                }
                (Err(_), Err(_)) => None,
            };
            // The frame buffer goes back to the pool with its charge, or is dropped with it.
            conn.release(frame.charge.bytes());
            let keep = !shared.budget.under_pressure();
            if keep {
                let _ = pool.borrow_mut().give_tagged(frame.buf, frame.charge);
            }
            match out {
                Some(out) => {
                    let charge = shared.budget.force(out.heap_bytes());
                    conn.push(out, charge);
                }
                None => conn.done(),
            }
        });
    }

    /// Answers a frame that cannot be delimited, if its header is there to answer.
    fn reject(&self, data: &[u8], e: &DecodeError) {
        if data.len() < HEADER_LEN {
            return;
        }
        if let Ok(h) = protocol::request_header(data) {
            let mut frame = Vec::new();
            protocol::encode_error(
                &mut frame,
                h.api_key,
                h.correlation_id,
                e.code(),
                &e.to_string(),
            );
            self.conn.start(0);
            let charge = self.shared.budget.force(frame.capacity());
            self.conn.push(Outgoing::Frame(frame), charge);
        }
    }
}

/// The size of the large frame starting `data`, if it is one (and within the limit).
fn large_frame_size(data: &[u8], frame_max: usize) -> Option<usize> {
    let size = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize + 4;
    (size >= LARGE_FRAME_BYTES && size <= frame_max && size > data.len()).then_some(size)
}

async fn write_loop<M: SegmentMap>(mut wr: WriteHalf<TcpStream>, conn: Rc<Conn<M>>) {
    let mut batch = Vec::new();
    let mut written = Vec::new();
    loop {
        loop {
            let l = conn.queued.listen();
            if !conn.queue.borrow().is_empty() || conn.closed.get() {
                break;
            }
            l.await;
        }
        if conn.queue.borrow().is_empty() && conn.closed.get() {
            break;
        }
        let mut result = Ok(());
        loop {
            let next = conn.queue.borrow_mut().pop_front();
            let Some((next, charge)) = next else { break };
            match &next {
                Outgoing::Frame(f) => batch.extend_from_slice(f),
                Outgoing::Fetch {
                    head,
                    splits,
                    slices,
                } => result = write_fetch(&mut wr, &mut batch, head, splits, slices).await,
            }
            written.push(charge);
            if result.is_err() || batch.len() >= WRITE_BATCH_BYTES {
                break;
            }
        }
        if result.is_ok() && !batch.is_empty() {
            result = wr.write_all(&batch).await;
        }
        if result.is_ok() {
            result = wr.flush().await;
        }
        batch.clear();
        if batch.capacity() > WRITE_BATCH_BYTES && conn.queue.borrow().is_empty() {
            // An idle connection does not keep a large write buffer.
            batch = Vec::new();
        }
        for charge in written.drain(..) {
            conn.sent(charge);
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "write failed; dropping the connection's responses");
            conn.broken.set(true);
            let dropped: Vec<_> = conn.queue.borrow_mut().drain(..).collect();
            for (_, charge) in dropped {
                conn.sent(charge);
            }
            conn.changed.notify(usize::MAX);
            break;
        }
    }
    let _ = wr.close().await;
}

/// Writes a fetch response: headers from `head`, record runs straight from the mappings.
async fn write_fetch<M: SegmentMap>(
    wr: &mut WriteHalf<TcpStream>,
    batch: &mut Vec<u8>,
    head: &[u8],
    splits: &[usize],
    slices: &[Option<Slice<M>>],
) -> std::io::Result<()> {
    let mut at = 0;
    for (split, slice) in splits.iter().zip(slices) {
        batch.extend_from_slice(&head[at..*split]);
        at = *split;
        if let Some(s) = slice {
            let bytes = s.bytes();
            if bytes.len() < 4096 {
                batch.extend_from_slice(bytes);
            } else {
                wr.write_all(batch).await?;
                batch.clear();
                wr.write_all(bytes).await?;
            }
        }
    }
    batch.extend_from_slice(&head[at..]);
    Ok(())
}
