//! One client connection: bytes to frames, frames to request tasks, responses back to bytes.
//!
//! Reading: frames are cut from an aligned receive buffer; each becomes its own 16-byte aligned
//! buffer (a large frame is read straight into its own buffer, with no second copy), so a Produce
//! request's record runs can be validated in place and appended with one copy. Each request runs as
//! a task, so many are in flight at once; at `connection_inflight_max` the connection stops reading,
//! which pushes back on the client through TCP.
//!
//! Writing: one writer task drains the outbox, coalescing small responses into one write and
//! writing fetched record runs straight from the segment mappings.
//!
//! A frame that cannot be delimited (too large, too short) closes only this connection, after an
//! error response when its header can be read. A frame that is delimited but not understood gets an
//! error response and the connection goes on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use rkyv::util::AlignedVec;

use super::{handler, Shared};
use crate::protocol::{self, DecodeError, FrameBuffers, HEADER_LEN};
use crate::shard::Shard;
use crate::storage::{MmapSegment, Slice};

/// Frames at least this large are read straight into their own buffer.
const LARGE_FRAME_BYTES: usize = 64 << 10;
/// Initial receive buffer.
const RECV_BUFFER_BYTES: usize = 256 << 10;
/// Coalesce queued small responses up to this many bytes per write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Bytes of frame buffers kept for reuse per connection (see [`FrameBuffers`]).
const FRAME_POOL_BYTES_MAX: usize = 4 << 20;

/// A response ready to be written.
pub(crate) enum Outgoing {
    /// A whole frame.
    Frame(Vec<u8>),
    /// A Fetch response: `head` with the record runs spliced in at `splits` (see
    /// `protocol::encode_fetch_response`).
    Fetch {
        head: Vec<u8>,
        splits: Vec<usize>,
        slices: Vec<Option<Slice<MmapSegment>>>,
    },
}

#[derive(Default)]
struct Outbox {
    queue: RefCell<VecDeque<Outgoing>>,
    event: Event,
    closed: Cell<bool>,
}

impl Outbox {
    fn push(&self, o: Outgoing) {
        self.queue.borrow_mut().push_back(o);
        self.event.notify(1);
    }
    fn close(&self) {
        self.closed.set(true);
        self.event.notify(1);
    }
}

#[derive(Default)]
struct Inflight {
    count: Cell<usize>,
    event: Event,
}

impl Inflight {
    async fn wait_below(&self, n: usize) {
        loop {
            let l = self.event.listen();
            if self.count.get() < n {
                return;
            }
            l.await;
        }
    }
}

/// Accepts connections until the task is dropped (shutdown).
pub(crate) async fn accept_loop(listener: TcpListener, shard: Rc<Shard>, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open: usize = shared
            .stats
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum();
        if open >= shared.config.connections_max {
            tracing::warn!(
                open,
                limit = shared.config.connections_max,
                "connection refused: limit reached"
            );
            drop(stream);
            continue;
        }
        let stats = shard.stats.clone();
        stats.connections.fetch_add(1, Ordering::AcqRel);
        let (shard, shared) = (shard.clone(), shared.clone());
        glommio::spawn_local(async move {
            serve(stream, shard, shared).await;
            stats.connections.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }
}

async fn serve(stream: TcpStream, shard: Rc<Shard>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(shared.config.idle_timeout_ms)));
    let peer = stream.peer_addr().ok();
    let (mut rd, wr) = futures_lite::io::split(stream);
    let out = Rc::new(Outbox::default());
    let writer = glommio::spawn_local(write_loop(wr, out.clone()));
    let inflight = Rc::new(Inflight::default());
    let pool = Rc::new(RefCell::new(FrameBuffers::new(FRAME_POOL_BYTES_MAX)));
    let frame_max = shared.config.frame_bytes_max;
    let inflight_max = shared.config.connection_inflight_max;
    let mut buf = AlignedVec::<16>::new();
    buf.resize(RECV_BUFFER_BYTES, 0);
    let (mut start, mut end) = (0usize, 0usize);

    'conn: loop {
        // Dispatch every whole frame in the buffer.
        loop {
            let data = &buf[start..end];
            match protocol::frame_len(data, frame_max) {
                Ok(Some(len)) => {
                    inflight.wait_below(inflight_max).await;
                    let mut frame = pool.borrow_mut().take(len);
                    frame[..len].copy_from_slice(&buf[start..start + len]);
                    start += len;
                    dispatch(frame, len, &shard, &shared, &out, &inflight, &pool);
                }
                Ok(None) => break,
                Err(e) => {
                    reject(&buf[start..end], &e, &out);
                    tracing::debug!(?peer, error = %e, "closing connection on an undelimitable frame");
                    break 'conn;
                }
            }
        }
        // A large frame in progress: read the rest straight into its own buffer.
        let data = &buf[start..end];
        if data.len() >= 4 {
            let size = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize + 4;
            if size >= LARGE_FRAME_BYTES {
                inflight.wait_below(inflight_max).await;
                let mut frame = pool.borrow_mut().take(size);
                let have = data.len();
                frame[..have].copy_from_slice(data);
                start = end;
                let read = future::or(
                    async { rd.read_exact(&mut frame[have..size]).await.map(|_| true) },
                    async {
                        shared.shutdown.wait().await;
                        Ok(false)
                    },
                )
                .await;
                match read {
                    Ok(true) => {
                        dispatch(frame, size, &shard, &shared, &out, &inflight, &pool);
                        continue;
                    }
                    _ => break 'conn,
                }
            }
        }
        // Keep the next frame 16-byte aligned and make room.
        if start == end {
            start = 0;
            end = 0;
        } else if start % 16 != 0 || buf.len() - end < 4096 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
        }
        inflight.wait_below(inflight_max).await;
        if shared.shutdown.is_set() {
            break;
        }
        let read = future::or(async { rd.read(&mut buf[end..]).await.map(Some) }, async {
            shared.shutdown.wait().await;
            Ok(None)
        })
        .await;
        match read {
            Ok(Some(0)) | Ok(None) => break,
            Ok(Some(n)) => end += n,
            Err(e) => {
                tracing::debug!(?peer, error = %e, "connection closed");
                break;
            }
        }
    }
    // Let every request already read finish and its response be written.
    inflight.wait_below(1).await;
    out.close();
    let _ = writer.await;
}

/// Runs the request `frame[..len]` as a task of its own.
fn dispatch(
    mut frame: AlignedVec<16>,
    len: usize,
    shard: &Rc<Shard>,
    shared: &Arc<Shared>,
    out: &Rc<Outbox>,
    inflight: &Rc<Inflight>,
    pool: &Rc<RefCell<FrameBuffers>>,
) {
    inflight.count.set(inflight.count.get() + 1);
    let (shard, shared, out, inflight, pool) = (
        shard.clone(),
        shared.clone(),
        out.clone(),
        inflight.clone(),
        pool.clone(),
    );
    glommio::spawn_local(async move {
        shard.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(response) = handler::handle(&shard, &shared, &mut frame[..len]).await {
            out.push(response);
        }
        pool.borrow_mut().give(frame);
        inflight.count.set(inflight.count.get() - 1);
        inflight.event.notify(usize::MAX);
    })
    .detach();
}

/// Answers a frame that cannot be delimited, if its header is there to answer.
fn reject(data: &[u8], e: &DecodeError, out: &Outbox) {
    if data.len() >= HEADER_LEN {
        if let Ok(h) = protocol::request_header(data) {
            let mut frame = Vec::new();
            protocol::encode_error(
                &mut frame,
                h.api_key,
                h.correlation_id,
                e.code(),
                &e.to_string(),
            );
            out.push(Outgoing::Frame(frame));
        }
    }
}

async fn write_loop(mut wr: futures_lite::io::WriteHalf<TcpStream>, out: Rc<Outbox>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES);
    loop {
        loop {
            let l = out.event.listen();
            if !out.queue.borrow().is_empty() || out.closed.get() {
                break;
            }
            l.await;
        }
        if out.queue.borrow().is_empty() && out.closed.get() {
            break;
        }
        let mut result = Ok(());
        loop {
            let next = out.queue.borrow_mut().pop_front();
            let Some(next) = next else { break };
            match next {
                Outgoing::Frame(f) => {
                    batch.extend_from_slice(&f);
                    if batch.len() >= WRITE_BATCH_BYTES {
                        break;
                    }
                }
                Outgoing::Fetch {
                    head,
                    splits,
                    slices,
                } => {
                    result = write_fetch(&mut wr, &mut batch, &head, &splits, &slices).await;
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        if result.is_ok() && !batch.is_empty() {
            result = wr.write_all(&batch).await;
            batch.clear();
        }
        if result.is_ok() {
            result = wr.flush().await;
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "write failed; dropping the connection's responses");
            out.queue.borrow_mut().clear();
            break;
        }
    }
    let _ = wr.close().await;
}

/// Writes a fetch response: headers from `head`, record runs straight from the mappings.
async fn write_fetch(
    wr: &mut futures_lite::io::WriteHalf<TcpStream>,
    batch: &mut Vec<u8>,
    head: &[u8],
    splits: &[usize],
    slices: &[Option<Slice<MmapSegment>>],
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
