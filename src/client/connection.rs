//! One TCP connection to a broker listener, pipelined: many requests in flight, responses matched
//! by correlation id in whatever order they come back.
//!
//! ```text
//!  callers ──request()──► [window: ≤ in_flight_max pending] ──writer mutex──► socket
//!                                 ▲                                            │
//!                                 └── reader thread: frame_len → aligned copy ◄┘
//!                                     → pending[correlation_id].send(frame)
//! ```
//!
//! - The pending entry is registered *before* the frame is written, so a fast response always
//!   finds it.
//! - The window is bounded: a caller that finds `in_flight_max` requests pending blocks until one
//!   completes (or `request_timeout_ms` passes). A Produce with `acks = none` gets no response from
//!   the broker, so it takes no window slot and registers no pending entry.
//! - Every received frame is copied into its own 16-byte aligned buffer, so record runs (which sit
//!   16-byte aligned from the frame start) can be read in place.
//! - On any failure — EOF, I/O error, a malformed frame, a request past its deadline — the
//!   connection is marked dead, the socket is shut down, and every pending request fails with
//!   [`ClientError::Disconnected`]. A dead connection is never revived; the client opens a new one.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::oneshot::{self, lock};
use super::{ClientConfig, ClientError};
use crate::protocol::{
    self, encode_produce_head, encode_request_at, frame_len, response_header, Acks, ApiKey,
    EncodeError, ErrorCode, FrameBuffers, Request, Response, ResponseHeader, HEADER_LEN,
};

/// Extra wait on a JoinGroup beyond its rebalance timeout: the broker's initial rebalance delay
/// (300 ms) twice over.
const JOIN_SETTLE_SLACK: Duration = Duration::from_millis(600);

/// Bytes read from the socket at a time; frames larger than this are read straight into their own
/// aligned buffer instead of through this one.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// An encode buffer that grew past this (a large Produce) is released after use rather than kept
/// for the life of the connection.
const ENCODE_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// Large frame buffers a connection keeps for reuse, in bytes (see [`FrameBuffers`]).
const FRAME_POOL_BYTES_MAX: usize = 16 << 20;

/// A whole response frame in a 16-byte aligned buffer of its own.
pub struct ResponseFrame {
    /// The frame is `bytes[..len]`; a reused buffer may be longer.
    bytes: AlignedVec<16>,
    len: usize,
    header: ResponseHeader,
    /// The version of the request this answers.
    version: u16,
    addr: Arc<str>,
    /// Where a large buffer goes back to when the frame is dropped.
    pool: Option<Weak<Mutex<FrameBuffers>>>,
}

impl Drop for ResponseFrame {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take().and_then(|p| p.upgrade()) {
            lock(&pool).give(std::mem::take(&mut self.bytes));
        }
    }
}

impl std::fmt::Debug for ResponseFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFrame")
            .field("header", &self.header)
            .field("len", &self.len)
            .finish()
    }
}

impl ResponseFrame {
    /// The frame's header.
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// The whole frame, size field included; its first byte is 16-byte aligned.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Decodes the body. A top-level error code becomes [`ClientError::Broker`] with the message
    /// the broker sent.
    pub fn decode(&self) -> Result<Response, ClientError> {
        if self.header.error_code != ErrorCode::None {
            return Err(ClientError::Broker {
                code: self.header.error_code,
                message: protocol::error_message(self.bytes()),
            });
        }
        match protocol::decode_response_at(self.bytes(), self.version) {
            Ok((_, Some(response))) => Ok(response),
            Ok((_, None)) => Err(ClientError::UnexpectedResponse {
                what: "success response without a body".into(),
            }),
            Err(source) => Err(ClientError::Protocol {
                addr: self.addr.to_string(),
                source,
            }),
        }
    }
}

/// The response to one request: a `std::future::Future` for async callers, with blocking
/// [`wait`](ResponseFuture::wait) and [`wait_timeout`](ResponseFuture::wait_timeout) for the
/// others. Dropping it abandons the response, not the request: the broker still executes it, and
/// its window slot is freed when the response arrives.
pub struct ResponseFuture {
    rx: oneshot::Receiver<Result<ResponseFrame, ClientError>>,
    addr: Arc<str>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ResponseFuture {
    fn lost(addr: &str) -> ClientError {
        ClientError::Disconnected {
            addr: addr.to_string(),
            reason: "the response was dropped or already taken".into(),
        }
    }

    /// Blocks until the response arrives or the connection fails. The connection enforces each
    /// request's deadline, so this returns within `request_timeout_ms` (plus the request's own
    /// wait, for a long-poll fetch or a durable produce).
    pub fn wait(self) -> Result<ResponseFrame, ClientError> {
        let addr = self.addr;
        self.rx.wait().unwrap_or_else(|| Err(Self::lost(&addr)))
    }

    /// Blocks for at most `timeout`. On [`ClientError::Timeout`] the future is still usable.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ResponseFrame, ClientError> {
        match self.rx.wait_deadline(Instant::now() + timeout) {
            Ok(Some(result)) => result,
            Ok(None) => Err(Self::lost(&self.addr)),
            Err(oneshot::Elapsed) => Err(ClientError::Timeout {
                what: "response",
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Runs `callback` on the connection's reader thread when the response arrives (or now, if it
    /// already has). The callback must not block.
    pub(crate) fn on_complete(
        self,
        callback: impl FnOnce(Result<ResponseFrame, ClientError>) + Send + 'static,
    ) {
        let addr = self.addr;
        self.rx
            .on_complete(move |v| callback(v.unwrap_or_else(|| Err(Self::lost(&addr)))));
    }
}

impl Future for ResponseFuture {
    type Output = Result<ResponseFrame, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.rx
            .poll_recv(cx)
            .map(|v| v.unwrap_or_else(|| Err(Self::lost(&this.addr))))
    }
}

struct Pending {
    tx: oneshot::Sender<Result<ResponseFrame, ClientError>>,
    api_key: ApiKey,
    /// The version the request was sent at: the response's body follows it.
    version: u16,
    /// Past this instant without a response the broker is considered stuck and the connection is
    /// closed, which fails this request (and every other pending one) with `Disconnected`.
    deadline: Instant,
}

struct ConnState {
    pending: HashMap<u32, Pending>,
    next_correlation_id: u32,
    /// Why the connection died; `None` while it is alive.
    dead: Option<String>,
}

struct WriterState {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct ConnShared {
    addr: Arc<str>,
    state: Mutex<ConnState>,
    /// Signalled when a window slot frees up or the connection dies.
    window: Condvar,
    writer: Mutex<WriterState>,
    /// A handle used only to shut the socket down, which also unblocks a writer stuck in
    /// `write_all` and the reader stuck in `read`.
    control: TcpStream,
    in_flight_max: usize,
    request_timeout: Duration,
    frame_bytes_max: usize,
    frames: Arc<Mutex<FrameBuffers>>,
    /// The version each api is sent at, by api key: the newest this build speaks until
    /// [`Connection::negotiated`] records what the broker answered in ApiVersions; `None` for an
    /// api the broker does not have.
    versions: Mutex<[Option<u16>; ApiKey::ALL.len()]>,
}

/// A pipelined connection to one broker listener. Cheap to share behind an `Arc`; dropping the
/// last handle closes the socket, which ends the reader thread.
pub struct Connection {
    shared: Arc<ConnShared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("in_flight", &self.in_flight())
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl Connection {
    /// Opens a connection to `addr` (`host:port`) with `TCP_NODELAY` set and starts its reader
    /// thread. Does no handshake: [`super::Client`] does ApiVersions on every connection it opens.
    pub fn connect(addr: &str, config: &ClientConfig) -> Result<Connection, ClientError> {
        config.validate()?;
        let connect_err = |source: io::Error| ClientError::Connect {
            addr: addr.to_string(),
            source: Arc::new(source),
        };
        let targets = addr.to_socket_addrs().map_err(connect_err)?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        let mut stream = None;
        for target in targets {
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| connect_err(last))?;
        let setup = |s: &TcpStream| -> io::Result<(TcpStream, TcpStream)> {
            // Requests are small and latency-bound; Nagle would hold them back for an ack.
            s.set_nodelay(true)?;
            // A broker that stops reading must not hang a writer forever; a timed-out write
            // leaves a partial frame on the wire, so it kills the connection.
            s.set_write_timeout(Some(Duration::from_millis(config.request_timeout_ms)))?;
            let reader = s.try_clone()?;
            // The reader wakes up this often when idle to enforce request deadlines.
            reader.set_read_timeout(Some(stall_check_interval(config.request_timeout_ms)))?;
            Ok((reader, s.try_clone()?))
        };
        let (reader, control) = setup(&stream).map_err(connect_err)?;
        let shared = Arc::new(ConnShared {
            addr: Arc::from(addr),
            state: Mutex::new(ConnState {
                pending: HashMap::new(),
                next_correlation_id: 1,
                dead: None,
            }),
            window: Condvar::new(),
            writer: Mutex::new(WriterState {
                stream,
                buf: Vec::new(),
            }),
            control,
            in_flight_max: config.in_flight_max,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            frame_bytes_max: config.frame_bytes_max,
            frames: Arc::new(Mutex::new(FrameBuffers::new(FRAME_POOL_BYTES_MAX))),
            versions: Mutex::new(ApiKey::ALL.map(|k| Some(k.versions().1))),
        });
        let for_reader = shared.clone();
        std::thread::Builder::new()
            .name(format!("levee-conn-{addr}"))
            .spawn(move || reader_main(for_reader, reader))
            .map_err(connect_err)?;
        tracing::debug!(addr, "connected");
        Ok(Connection { shared })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Records the versions negotiated with the broker (see [`ApiKey::negotiate`]): every later
    /// request of `api` is sent at `versions[api as usize]`, and one of an api the broker lacks
    /// (`None`) fails at once with [`ClientError::UnsupportedVersion`].
    pub fn negotiated(&self, versions: [Option<u16>; ApiKey::ALL.len()]) {
        *lock(&self.shared.versions) = versions;
    }

    /// The version requests of `api` are sent at, `None` if the broker does not have it.
    pub fn version(&self, api: ApiKey) -> Option<u16> {
        lock(&self.shared.versions)[api as usize]
    }

    fn version_or_fail(&self, api: ApiKey) -> Result<u16, ClientError> {
        self.version(api)
            .ok_or_else(|| ClientError::UnsupportedVersion {
                broker: self.shared.addr.to_string(),
                api,
                version: api.versions().1,
                supported: None,
            })
    }

    /// True once the connection failed or was closed; it never recovers.
    pub fn is_dead(&self) -> bool {
        lock(&self.shared.state).dead.is_some()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).pending.len()
    }

    /// Sends any request but Produce (see [`Connection::produce`]). Blocks while the in-flight
    /// window is full, for at most `request_timeout_ms`. The response's deadline is
    /// `request_timeout_ms`, plus `max_wait_ms` for a Fetch and the rebalance timeout for a
    /// JoinGroup.
    pub fn request(&self, request: &Request) -> Result<ResponseFuture, ClientError> {
        if matches!(request, Request::Produce(_)) {
            return Err(ClientError::InvalidConfig {
                field: "request",
                reason: "Produce requests are sent with Connection::produce".into(),
            });
        }
        let extra_wait = match request {
            Request::Fetch(f) => Duration::from_millis(u64::from(f.max_wait_ms)),
            // A join is answered when the group's rebalance settles: by the rebalance timeout,
            // plus the initial delay that gathers members started together.
            Request::JoinGroup(j) => {
                Duration::from_millis(u64::from(j.rebalance_timeout_ms)) + JOIN_SETTLE_SLACK
            }
            Request::ProduceDelayed(p) => Duration::from_millis(u64::from(p.timeout_ms)),
            _ => Duration::ZERO,
        };
        let version = self.version_or_fail(request.api_key())?;
        let future = self.send_frame(
            request.api_key(),
            version,
            true,
            extra_wait,
            &[],
            |out, cid| encode_request_at(out, version, cid, request).map(|()| Vec::new()),
        )?;
        future.ok_or_else(|| unreachable_no_future(&self.shared.addr))
    }

    /// Sends a request the broker does not answer (a ProduceDelayed with `acks = none`): done
    /// once the frame is written.
    pub fn request_no_response(&self, request: &Request) -> Result<(), ClientError> {
        let version = self.version_or_fail(request.api_key())?;
        self.send_frame(
            request.api_key(),
            version,
            false,
            Duration::ZERO,
            &[],
            |out, cid| encode_request_at(out, version, cid, request).map(|()| Vec::new()),
        )
        .map(drop)
    }

    /// Sends a Produce request. The record runs are written from where they lie (vectored I/O),
    /// never copied into the connection's buffer. Returns `Ok(None)` for `acks = none` once the frame is written (the
    /// broker sends no response, so nothing is registered), else the response future, whose
    /// deadline is `request_timeout_ms` plus `timeout_ms` (the broker's own wait for durability).
    pub fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        blocks: &[(&str, u32, &[u8])],
    ) -> Result<Option<ResponseFuture>, ClientError> {
        let expect_response = acks != Acks::None;
        let extra_wait = Duration::from_millis(u64::from(timeout_ms));
        let runs: Vec<&[u8]> = blocks.iter().map(|&(_, _, run)| run).collect();
        let version = self.version_or_fail(ApiKey::Produce)?;
        self.send_frame(
            ApiKey::Produce,
            version,
            expect_response,
            extra_wait,
            &runs,
            |out, cid| encode_produce_head(out, version, cid, acks, timeout_ms, blocks),
        )
    }

    /// Closes the connection: pending requests fail with `Disconnected`.
    pub fn close(&self) {
        self.shared.kill("closed by the client".into());
    }

    fn send_frame(
        &self,
        api_key: ApiKey,
        version: u16,
        expect_response: bool,
        extra_wait: Duration,
        runs: &[&[u8]],
        encode: impl FnOnce(&mut Vec<u8>, u32) -> Result<Vec<usize>, EncodeError>,
    ) -> Result<Option<ResponseFuture>, ClientError> {
        let s = &self.shared;
        let (cid, rx) = {
            let mut st = lock(&s.state);
            if expect_response {
                let window_deadline = Instant::now() + s.request_timeout;
                loop {
                    if let Some(reason) = &st.dead {
                        return Err(s.disconnected(reason));
                    }
                    if st.pending.len() < s.in_flight_max {
                        break;
                    }
                    let now = Instant::now();
                    if now >= window_deadline {
                        return Err(ClientError::Timeout {
                            what: "waiting for a free in-flight slot",
                            timeout_ms: s.request_timeout.as_millis() as u64,
                        });
                    }
                    st = s
                        .window
                        .wait_timeout(st, window_deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            } else if let Some(reason) = &st.dead {
                return Err(s.disconnected(reason));
            }
            let cid = st.allocate_correlation_id();
            let rx = expect_response.then(|| {
                let (tx, rx) = oneshot::channel();
                let deadline = Instant::now() + s.request_timeout + extra_wait;
                st.pending.insert(
                    cid,
                    Pending {
                        tx,
                        api_key,
                        version,
                        deadline,
                    },
                );
                rx
            });
            (cid, rx)
        };
        let written = {
            let mut w = lock(&s.writer);
            let WriterState { stream, buf } = &mut *w;
            let result = match encode(buf, cid) {
                Err(EncodeError::FrameTooLarge { size, max }) => Err(ClientError::RecordTooLarge {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    max,
                    limit: "the protocol's frame size",
                }),
                Err(e) => Err(ClientError::Encode(e)),
                Ok(splits) => {
                    debug_assert_eq!(splits.len(), runs.len());
                    let size = buf.len() + runs.iter().map(|r| r.len()).sum::<usize>();
                    debug_assert_eq!(
                        u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4,
                        size
                    );
                    if size > s.frame_bytes_max {
                        Err(ClientError::RecordTooLarge {
                            size,
                            max: s.frame_bytes_max,
                            limit: "frame_bytes_max",
                        })
                    } else {
                        write_spliced(stream, buf, &splits, runs).map_err(|e| {
                            ClientError::Disconnected {
                                addr: s.addr.to_string(),
                                reason: format!("write failed: {e}"),
                            }
                        })
                    }
                }
            };
            if buf.capacity() > ENCODE_BUFFER_KEEP_BYTES {
                *buf = Vec::new();
            }
            result
        };
        if let Err(e) = written {
            // Take our own entry back first, so this caller gets the error directly and the
            // entry does not linger in the window.
            let ours = lock(&s.state).pending.remove(&cid);
            drop(ours);
            s.window.notify_one();
            if let ClientError::Disconnected { reason, .. } = &e {
                s.kill(reason.clone());
            }
            return Err(e);
        }
        Ok(rx.map(|rx| ResponseFuture {
            rx,
            addr: s.addr.clone(),
        }))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Never join the reader here: the last handle may be dropped on the reader thread itself
        // (by a completion callback). Shutting the socket down makes the reader exit on its own.
        self.shared.kill("connection dropped".into());
    }
}

/// Writes `head[..s0]`, `runs[0]`, `head[s0..s1]`, `runs[1]`, …, `head[sn..]` with as few
/// `writev` calls as the socket allows.
fn write_spliced(
    stream: &mut TcpStream,
    head: &[u8],
    splits: &[usize],
    runs: &[&[u8]],
) -> io::Result<()> {
    let mut parts = Vec::with_capacity(2 * runs.len() + 1);
    let mut at = 0;
    for (&split, run) in splits.iter().zip(runs) {
        parts.push(io::IoSlice::new(&head[at..split]));
        parts.push(io::IoSlice::new(run));
        at = split;
    }
    parts.push(io::IoSlice::new(&head[at..]));
    parts.retain(|p| !p.is_empty());
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        match stream.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn unreachable_no_future(addr: &str) -> ClientError {
    ClientError::Disconnected {
        addr: addr.to_string(),
        reason: "internal: no response registered".into(),
    }
}

fn stall_check_interval(request_timeout_ms: u64) -> Duration {
    Duration::from_millis((request_timeout_ms / 4).clamp(10, 1000))
}

impl ConnState {
    fn allocate_correlation_id(&mut self) -> u32 {
        // Ids wrap after 4 billion requests; skip any still pending so an id is never shared.
        // The window bounds the pending set, so this loop ends within in_flight_max + 1 steps.
        loop {
            let cid = self.next_correlation_id;
            self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
            if !self.pending.contains_key(&cid) {
                return cid;
            }
        }
    }
}

impl ConnShared {
    fn disconnected(&self, reason: &str) -> ClientError {
        ClientError::Disconnected {
            addr: self.addr.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Marks the connection dead (once), shuts the socket, and fails every pending request.
    fn kill(&self, reason: String) {
        let pending = {
            let mut st = lock(&self.state);
            if st.dead.is_some() {
                return;
            }
            tracing::debug!(addr = %self.addr, %reason, pending = st.pending.len(), "connection closed");
            st.dead = Some(reason.clone());
            std::mem::take(&mut st.pending)
        };
        self.window.notify_all();
        // Errors here mean the socket is already gone, which is what we want.
        let _ = self.control.shutdown(Shutdown::Both);
        // Completing runs callbacks, so it happens with no lock held.
        for (_, p) in pending {
            p.tx.send(Err(self.disconnected(&reason)));
        }
    }

    /// Hands one whole frame to the request waiting for it.
    /// Hands the frame `bytes[..len]` to the request waiting for it; a buffer from the frame pool
    /// goes back there once the frame is dropped.
    fn deliver(&self, bytes: AlignedVec<16>, len: usize, pooled: bool) -> Result<(), String> {
        let header =
            response_header(&bytes[..len]).map_err(|e| format!("bad response header: {e}"))?;
        let pending = {
            let mut st = lock(&self.state);
            st.pending.remove(&header.correlation_id)
        };
        self.window.notify_one();
        let Some(p) = pending else {
            // Not fatal: a broker may answer a request that carried acks = none with an error
            // (e.g. when it could not decode it far enough to see the acks byte).
            tracing::warn!(
                addr = %self.addr,
                correlation_id = header.correlation_id,
                error = ?header.error_code,
                "response to no pending request, dropped"
            );
            return Ok(());
        };
        if header.api_key != p.api_key as u16 {
            p.tx.send(Err(ClientError::UnexpectedResponse {
                what: format!(
                    "response to {:?} carries api key {}",
                    p.api_key, header.api_key
                ),
            }));
            return Ok(());
        }
        p.tx.send(Ok(ResponseFrame {
            bytes,
            len,
            header,
            version: p.version,
            addr: self.addr.clone(),
            pool: pooled.then(|| Arc::downgrade(&self.frames)),
        }));
        Ok(())
    }

    /// The reason to give up on the connection if some request is past its deadline.
    fn stalled(&self) -> Option<String> {
        let st = lock(&self.state);
        let now = Instant::now();
        st.pending
            .values()
            .find(|p| p.deadline <= now)
            .map(|p| format!("no response to {:?} before its deadline", p.api_key))
    }
}

fn reader_main(shared: Arc<ConnShared>, mut stream: TcpStream) {
    /// Fails the pending requests however the thread ends, a panic included: a request whose
    /// reader is gone would otherwise wait for a response nobody will deliver.
    struct KillOnExit(Arc<ConnShared>);
    impl Drop for KillOnExit {
        fn drop(&mut self) {
            self.0.kill("the reader thread exited".into());
        }
    }
    let guard = KillOnExit(shared);
    let reason = match read_frames(&guard.0, &mut stream) {
        Ok(()) => "closed by the broker".to_string(),
        Err(reason) => reason,
    };
    guard.0.kill(reason);
}

/// What one `read` call produced.
enum ReadOutcome {
    Bytes(usize),
    Eof,
    /// The read timed out: a tick to check deadlines.
    Idle,
}

fn read_some(shared: &ConnShared, stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        match read_once(stream, buf)? {
            ReadOutcome::Bytes(n) => return Ok(n),
            ReadOutcome::Eof => return Ok(0),
            ReadOutcome::Idle => {
                if let Some(reason) = shared.stalled() {
                    return Err(reason);
                }
                if lock(&shared.state).dead.is_some() {
                    return Ok(0);
                }
            }
        }
    }
}

fn read_once(stream: &mut TcpStream, buf: &mut [u8]) -> Result<ReadOutcome, String> {
    match stream.read(buf) {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => Ok(ReadOutcome::Bytes(n)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Idle),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(ReadOutcome::Idle)
        }
        Err(e) => Err(format!("read failed: {e}")),
    }
}

/// Reads frames until EOF (`Ok`) or a failure (`Err(reason)`).
fn read_frames(shared: &ConnShared, stream: &mut TcpStream) -> Result<(), String> {
    let max = shared.frame_bytes_max;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        let available = &buf[start..end];
        match frame_len(available, max) {
            Ok(Some(len)) => {
                let mut frame = AlignedVec::<16>::with_capacity(len);
                frame.extend_from_slice(&available[..len]);
                start += len;
                shared.deliver(frame, len, false)?;
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bad frame: {e}")),
        }
        let have = end - start;
        if have >= 4 {
            // frame_len already checked the size against the maximum.
            let size =
                u32::from_le_bytes([buf[start], buf[start + 1], buf[start + 2], buf[start + 3]])
                    as usize
                    + 4;
            debug_assert!((HEADER_LEN..=max).contains(&size));
            if size > buf.len() {
                // A frame larger than the read buffer goes straight into its own aligned buffer.
                let mut frame = lock(&shared.frames).take(size);
                frame[..have].copy_from_slice(&buf[start..end]);
                let mut filled = have;
                while filled < size {
                    let n = read_some(shared, stream, &mut frame[filled..size])?;
                    if n == 0 {
                        return Err("closed by the broker in the middle of a frame".into());
                    }
                    filled += n;
                }
                start = 0;
                end = 0;
                shared.deliver(frame, size, true)?;
                continue;
            }
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = read_some(shared, stream, &mut buf[end..])?;
        if n == 0 {
            return if end == 0 {
                Ok(())
            } else {
                Err("closed by the broker in the middle of a frame".into())
            };
        }
        end += n;
    }
}
