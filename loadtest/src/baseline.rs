//! The physical limits each scenario is compared against, measured in the same run on the same
//! machine: minimal glommio servers (one unpinned `LocalExecutor` thread each, the runtime the
//! broker uses) and the client side the Levee client uses (a blocking `std::net::TcpStream` with
//! `TCP_NODELAY`).
//!
//! - **Raw sink** (produce): the client writes pre-built buffers one way; the server reads them into
//!   a 1 MiB buffer and discards them.
//! - **Raw source** (consume): the server writes a 1 MiB buffer over and over until it has sent the
//!   asked-for bytes; the client reads into a 1 MiB buffer until EOF.
//! - **Echo** (latency): 64-byte ping-pong, one in flight.
//! - **Echo streams** (flash-sale): many connections, each echoing every byte it reads, so the
//!   sale's schedule can be played over raw TCP with the same thread layout as the Levee client
//!   (a pacer writes, a reader thread per connection): the floor of the sale's shape here.
//!
//! Every server serves a fixed number of connections, each loop ends at EOF or after a fixed byte
//! or round count, and every socket has a timeout: a baseline cannot hang the run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::report;

/// Size of the servers' read buffer, the raw source's write buffer and the clients' read buffer.
pub const BUFFER_BYTES: usize = 1 << 20;
/// glommio registered-buffer memory per ring: 3 rings × 1 MiB stays under an 8 MiB memlock limit.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// No single accept, read or write of a baseline may take longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of one ping-pong message.
pub const PING_BYTES: usize = 64;

/// A baseline server running on its own executor thread.
pub struct Server<T: Send + 'static> {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    handle: glommio::ExecutorJoinHandle<Result<T, String>>,
}

impl<T: Send + 'static> Server<T> {
    /// Waits for the server to finish and returns what it measured.
    pub fn join(self) -> anyhow::Result<T> {
        match self.handle.join() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => bail!("baseline server failed: {e}"),
            Err(e) => bail!("baseline server thread failed: {e}"),
        }
    }
}

/// Starts `serve(listener)` on a fresh unpinned executor and returns once it listens.
fn spawn_server<T, F, Fut>(name: &str, serve: F) -> anyhow::Result<Server<T>>
where
    T: Send + 'static,
    F: FnOnce(glommio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move {
            let listener = match glommio::net::TcpListener::bind("127.0.0.1:0") {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err("bind failed".to_string());
                }
            };
            let _ = tx.send(listener.local_addr().map_err(|e| e.to_string()));
            serve(listener).await
        })
        .map_err(|e| anyhow::anyhow!("cannot start the {name} executor: {e}"))?;
    let addr = rx
        .recv_timeout(IO_TIMEOUT)
        .context("baseline server did not start")?
        .map_err(|e| anyhow::anyhow!("baseline server cannot listen: {e}"))?;
    Ok(Server { addr, handle })
}

/// Accepts one connection within [`IO_TIMEOUT`], with `TCP_NODELAY` and timeouts set.
async fn accept(listener: &glommio::net::TcpListener) -> Result<glommio::net::TcpStream, String> {
    let stream = glommio::timer::timeout(IO_TIMEOUT, listener.accept())
        .await
        .map_err(|e| format!("accept: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Starts a raw sink for `connections` one-way streams; `join` returns the bytes it read.
pub fn raw_sink(connections: usize) -> anyhow::Result<Server<u64>> {
    spawn_server("raw-sink", move |listener| async move {
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut stream = accept(&listener).await?;
            tasks.push(glommio::spawn_local(async move {
                let mut buf = vec![0u8; BUFFER_BYTES];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => return Ok(total),
                        Ok(n) => total += n as u64,
                        Err(e) => return Err(format!("sink read: {e}")),
                    }
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        Ok(total)
    })
}

/// Starts a raw source for `connections` streams, each sent `bytes_each` bytes in writes of up to
/// 1 MiB, then closed.
pub fn raw_source(connections: usize, bytes_each: u64) -> anyhow::Result<Server<u64>> {
    spawn_server("raw-source", move |listener| async move {
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut stream = accept(&listener).await?;
            tasks.push(glommio::spawn_local(async move {
                // Non-zero, so no layer can shortcut zero pages.
                let buf = vec![0x5au8; BUFFER_BYTES];
                let mut sent = 0u64;
                while sent < bytes_each {
                    let n = (bytes_each - sent).min(BUFFER_BYTES as u64) as usize;
                    if let Err(e) = stream.write_all(&buf[..n]).await {
                        return Err(format!("source write: {e}"));
                    }
                    sent += n as u64;
                }
                let _ = stream.close().await;
                Ok(sent)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        Ok(total)
    })
}

/// Starts an echo server for one connection of at most `rounds` ping-pongs of [`PING_BYTES`].
pub fn echo(rounds: u64) -> anyhow::Result<Server<u64>> {
    spawn_server("echo", move |listener| async move {
        let mut stream = accept(&listener).await?;
        let mut buf = [0u8; PING_BYTES];
        let mut done = 0u64;
        while done < rounds {
            match stream.read_exact(&mut buf).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("echo read: {e}")),
            }
            stream
                .write_all(&buf)
                .await
                .map_err(|e| format!("echo write: {e}"))?;
            done += 1;
        }
        Ok(done)
    })
}

/// Starts an echo server for `connections` streams that writes back every byte it reads, until
/// each client closes; `join` returns the bytes echoed.
pub fn echo_streams(connections: usize) -> anyhow::Result<Server<u64>> {
    spawn_server("echo-streams", move |listener| async move {
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut stream = accept(&listener).await?;
            tasks.push(glommio::spawn_local(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0u64;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) => return Ok(total),
                        Ok(n) => n,
                        Err(e) => return Err(format!("echo read: {e}")),
                    };
                    stream
                        .write_all(&buf[..n])
                        .await
                        .map_err(|e| format!("echo write: {e}"))?;
                    total += n as u64;
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        Ok(total)
    })
}

/// A blocking client socket as the Levee client sets it up.
pub fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// What one side of a one-way stream measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes moved.
    pub bytes: u64,
    /// From the first byte written (or the connection, for reads) to the last byte read.
    pub elapsed: Duration,
}

/// Writes every buffer of `frames` in order, then closes the stream and waits for the server to
/// close its side.
pub fn write_stream(stream: &mut TcpStream, frames: &[&[u8]]) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for f in frames {
        stream.write_all(f).context("raw sink write")?;
        bytes += f.len() as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the server to close its side, so the elapsed time covers the reads too.
    let mut probe = [0u8; 1];
    let _ = stream.read(&mut probe);
    Ok(bytes)
}

/// Reads from the stream into a 1 MiB buffer until EOF or `limit` bytes.
pub fn read_stream(stream: &mut TcpStream, limit: u64) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut total = 0u64;
    while total < limit {
        let n = stream.read(&mut buf).context("raw source read")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total)
}

/// Runs `producers` parallel raw streams, producer `i` writing `frames[i]`, into one raw sink.
pub fn measure_raw_sink(frames: &[Vec<&[u8]>]) -> anyhow::Result<Transfer> {
    let server = raw_sink(frames.len())?;
    let mut streams = frames
        .iter()
        .map(|_| connect(server.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let sent = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter_mut()
            .zip(frames)
            .map(|(stream, f)| s.spawn(move || write_stream(stream, f)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("raw sink writer panicked"))
            .sum::<anyhow::Result<u64>>()
    })?;
    let elapsed = start.elapsed();
    let received = server.join()?;
    if received != sent {
        bail!("raw sink received {received} of {sent} bytes");
    }
    Ok(Transfer {
        bytes: sent,
        elapsed,
    })
}

/// Runs `consumers` parallel raw streams of `bytes_each` bytes from one raw source.
pub fn measure_raw_source(consumers: usize, bytes_each: u64) -> anyhow::Result<Transfer> {
    let server = raw_source(consumers, bytes_each)?;
    let mut streams = (0..consumers)
        .map(|_| connect(server.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let received = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter_mut()
            .map(|stream| s.spawn(move || read_stream(stream, bytes_each)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("raw source reader panicked"))
            .sum::<anyhow::Result<u64>>()
    })?;
    let elapsed = start.elapsed();
    let sent = server.join()?;
    if received != sent {
        bail!("raw source sent {sent} bytes, {received} received");
    }
    Ok(Transfer {
        bytes: received,
        elapsed,
    })
}

/// Closed-loop 64-byte ping-pong for at most `rounds` round trips or `duration`, whichever ends
/// first; the first `warmup` round trips are not recorded.
pub fn measure_pingpong(
    rounds: u64,
    duration: Duration,
    warmup: u64,
) -> anyhow::Result<Histogram<u64>> {
    let server = echo(rounds + warmup)?;
    let mut stream = connect(server.addr)?;
    let mut hist = report::latency_histogram();
    let ping = [0x42u8; PING_BYTES];
    let mut pong = [0u8; PING_BYTES];
    let mut deadline = Instant::now() + duration;
    for i in 0..rounds + warmup {
        if i == warmup {
            deadline = Instant::now() + duration;
        }
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        stream.write_all(&ping)?;
        stream.read_exact(&mut pong)?;
        let rtt = t0.elapsed();
        if i >= warmup {
            report::record(&mut hist, rtt);
        }
    }
    drop(stream);
    server.join()?;
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_raw_sink_when_streams_written_should_count_every_byte() {
        let a = vec![1u8; 300_000];
        let b = [2u8; 5];
        let frames = [vec![&a[..], &b[..]], vec![&b[..]]];
        let t = measure_raw_sink(&frames).unwrap();
        assert_eq!(t.bytes, 300_010);
    }

    #[test]
    fn given_raw_source_when_read_should_receive_every_byte() {
        let t = measure_raw_source(2, 3 * BUFFER_BYTES as u64 + 7).unwrap();
        assert_eq!(t.bytes, 2 * (3 * BUFFER_BYTES as u64 + 7));
    }

    #[test]
    fn given_echo_when_pinged_should_record_each_round_trip() {
        let h = measure_pingpong(50, Duration::from_secs(10), 5).unwrap();
        assert_eq!(h.len(), 50);
    }
}
