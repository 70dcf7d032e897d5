//! Drivers, as the OpenMessaging Benchmark has them: the scenarios (`flash-sale`) are written once
//! against [`Target`], [`OrderProducer`] and [`OrderWorker`]; only the driver differs between
//! Levee, Redis Streams and NATS JetStream.
//!
//! A driver either starts its server as a child process on a temporary dir on 127.0.0.1 (the
//! `levee`, `redis-server` or `nats-server` binary) or talks to one given with `--broker`. What
//! each target promises for each `--acks` level is in loadtest/README.md.

pub mod levee;
pub mod nats;
pub mod redis;

use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::broker::BrokerArgs;
use crate::common::AcksArg;

/// Which system a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Levee, through its Rust client's Producer and GroupConsumer.
    Levee,
    /// Redis Streams: XADD, consumer groups with XREADGROUP and XACK.
    Redis,
    /// NATS JetStream: a work-queue stream and a durable pull consumer.
    Nats,
}

impl TargetKind {
    /// The name reports and plots use.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Levee => "levee",
            TargetKind::Redis => "redis",
            TargetKind::Nats => "nats",
        }
    }
}

/// Called once with a sent order's outcome, as `--acks` says, on whichever thread learns it
/// first: it must be quick and must not block.
pub type Done = Box<dyn FnOnce(anyhow::Result<()>) + Send>;

/// A system under test, with the queue of one scenario run on it.
pub trait Target: Send + Sync {
    /// Creates the queue (`partitions` where the target has partitions) and the workers' group.
    fn prepare(&mut self, partitions: u32) -> anyhow::Result<()>;
    /// One producer connection.
    fn producer(&self) -> anyhow::Result<Box<dyn OrderProducer>>;
    /// One member of the workers' group; `index` names it; it takes at most `batch` orders per
    /// poll.
    fn worker(&self, index: usize, batch: usize) -> anyhow::Result<Box<dyn OrderWorker>>;
    /// Whether a producer's `send` blocks until the order is answered (a synchronous client):
    /// then each connection needs a thread of its own to keep to the schedule.
    fn send_blocks(&self) -> bool {
        false
    }
    /// The server process this run started (its RssAnon is sampled), if any.
    fn server_pid(&self) -> Option<u32>;
    /// Stops the server this run started and removes its data (a server given with `--broker`
    /// keeps running; the run's queue is deleted from it).
    fn stop(self: Box<Self>) -> anyhow::Result<()>;
}

/// A producer on its own connection.
pub trait OrderProducer: Send {
    /// Sends one order keyed by `key` (the user) and calls `done` with its outcome: later, when
    /// the acknowledgement comes, or before returning for targets whose send is synchronous.
    fn send(&mut self, key: u64, value: &[u8], done: Done);
    /// Flushes and closes.
    fn close(self: Box<Self>) -> anyhow::Result<()>;
}

/// A member of the workers' group.
pub trait OrderWorker: Send {
    /// Up to `max` orders, waiting at most `wait` for the first.
    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Vec<u8>>>;
    /// Acknowledges (commits) every order `poll` returned so far: they are not delivered again.
    fn commit(&mut self) -> anyhow::Result<()>;
    /// Leaves the group.
    fn close(self: Box<Self>) -> anyhow::Result<()>;
}

/// How to reach or start a target.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct TargetArgs {
    /// What to run on; several (comma-separated) run one after another and share the plot.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "levee")]
    pub target: Vec<TargetKind>,
    /// `redis-server` to start for `--target redis`.
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: String,
    /// `nats-server` to start for `--target nats`.
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: String,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Starts (or reaches, with `--broker`) `kind`, acknowledging as `acks` says.
pub fn start(
    kind: TargetKind,
    args: &TargetArgs,
    acks: AcksArg,
) -> anyhow::Result<Box<dyn Target>> {
    Ok(match kind {
        TargetKind::Levee => Box::new(levee::LeveeTarget::start(&args.broker, acks)?),
        TargetKind::Redis => Box::new(redis::RedisTarget::start(args, acks)?),
        TargetKind::Nats => Box::new(nats::NatsTarget::start(args, acks)?),
    })
}

/// A free TCP port on 127.0.0.1 for a server this run starts (bound and released: another
/// process could take it in between, which then fails the start loudly).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, at most `timeout`.
pub fn wait_listening(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child server process, killed (SIGTERM, then SIGKILL) and its dir removed when dropped.
#[derive(Debug)]
pub struct ChildServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts `program` on a free port of 127.0.0.1 with its data in a fresh temporary dir
    /// (under `--data-dir` when given), `args` being its arguments for that dir and port, and
    /// waits until it listens: the server and its address.
    pub fn start(
        program: &str,
        parent: Option<&std::path::Path>,
        args: impl FnOnce(&std::path::Path, u16) -> Vec<std::ffi::OsString>,
    ) -> anyhow::Result<(ChildServer, String)> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{program}-loadtest-"))
            .tempdir_in(parent.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf))?;
        let port = free_port()?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args(dir.path(), port));
        let server = ChildServer::spawn(cmd, dir)?;
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, Duration::from_secs(30))?;
        Ok((server, addr))
    }

    /// Spawns `cmd`, whose data lives in `dir`.
    pub fn spawn(mut cmd: std::process::Command, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {program} (is it installed?)"))?;
        Ok(ChildServer { child, _dir: dir })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it: SIGTERM, SIGKILL after 10 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// RssAnon of process `pid` in bytes, from /proc; `None` when it cannot be read.
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
