//! The server: the broker's lifecycle, listeners and connections.
//!
//! [`Broker::start`] locks the data directory, loads the catalog, starts the storage threads and
//! one executor per shard (pinned to its core when `pin_cpus`), and waits until every shard has
//! bound its listeners. Shard 0 also binds the bootstrap listener (`--listen`) and the metrics
//! listener. Every shard accepts on its own port, advertised in Metadata, so a partition-aware
//! client reaches the owning shard with no cross-core hop; any request also works on any
//! connection, through [`Shard::on_owner`]. Partitions open on first use, so start-up does not
//! depend on how many there are.
//!
//! Shutdown ([`Broker::shutdown`]): stop accepting, answer pending long polls at once, let
//! in-flight requests finish and their responses be written (bounded by a grace period), keep
//! serving forwarded work until every shard has drained, then flush and close every log.
//!
//! Failure: a panic in a request is answered `Internal` and logged; the connection and the shard go
//! on. If a shard's thread dies anyway, the broker fails stop: it prints one `error:` line and the
//! process exits with status 1, never half-alive.
//!
//! This module owns sockets and the lifecycle. Storage is reached only through `shard`, and the
//! runtime only through `runtime`.

mod budget;
mod connection;
mod handler;
pub mod kafka;
mod metrics;
mod response;
mod session;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use event_listener::Event;

pub use budget::{Charge, MemoryBudget};
pub use session::Session;

use crate::catalog::{Catalog, CatalogError, CatalogLimits};
use crate::config::BrokerConfig;
use crate::runtime::{self, ExecutorHandle, ExecutorSpec};
use crate::shard::{Job, Shard, Stats};
use crate::storage::{FlushPool, Io, MmapIo};

/// How long shutdown waits for connections to finish what they started.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another broker holds the data directory.
    #[error("data directory {dir} is locked by another running broker")]
    DataDirLocked {
        /// The directory.
        dir: PathBuf,
    },
    /// A file operation on the data directory failed.
    #[error("data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The topic catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The quota file could not be loaded.
    #[error(transparent)]
    Quotas(#[from] crate::flow::quota::QuotaError),
    /// A shard failed to start (bind, executor, memory lock).
    #[error("shard {shard} failed to start: {message}")]
    Shard {
        /// Which shard.
        shard: u16,
        /// What happened.
        message: String,
    },
}

/// Shared shutdown signal.
pub(crate) struct Shutdown {
    flag: AtomicBool,
    event: Event,
    /// Shards still serving connections; forwarded work is served until it reaches zero.
    draining: AtomicUsize,
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&self) {
        loop {
            let l = self.event.listen();
            if self.is_set() {
                return;
            }
            l.await;
        }
    }

    fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }
}

/// What every shard shares.
pub(crate) struct Shared {
    pub config: Arc<BrokerConfig>,
    pub catalog: Arc<Catalog>,
    pub budget: Arc<MemoryBudget>,
    pub stats: Vec<Arc<Stats>>,
    /// Flow-control state all shards share.
    pub flow: Arc<crate::flow::Flow>,
    /// What the metrics endpoint reads besides the counters.
    pub metrics: metrics::Metrics,
    /// The storage threads (their flush statistics).
    pub pool: Arc<FlushPool>,
    pub shard_addrs: OnceLock<Vec<SocketAddr>>,
    /// Every shard's Kafka listener, by shard number (empty without `--kafka-listen`).
    pub kafka_addrs: OnceLock<Vec<SocketAddr>>,
    pub shutdown: Shutdown,
    /// When the broker started (Stats reports the uptime).
    pub started: std::time::Instant,
    /// Failpoint `shard-panic` (see [`crate::failpoint`]): a shard's main task panics.
    pub failpoint_shard_panic: Event,
}

/// A running broker.
pub struct Broker {
    /// The bootstrap listener's address.
    pub listen: SocketAddr,
    /// The metrics listener's address.
    pub metrics: SocketAddr,
    /// Every shard's own listener, by shard number.
    pub shard_addrs: Vec<SocketAddr>,
    /// Every shard's Kafka listener, by shard number (empty without `--kafka-listen`).
    pub kafka_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    handles: Vec<ExecutorHandle>,
    // Dropped after the shards: their logs flush through it until they close.
    _pool: Arc<FlushPool>,
    _lock: std::fs::File,
}

/// Takes an exclusive, non-blocking flock on `<data_dir>/levee.lock` for the broker's lifetime.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let err = |source| ServerError::DataDir {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("levee.lock"))
        .map_err(err)?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            ServerError::DataDirLocked {
                dir: dir.to_owned(),
            }
        } else {
            err(e)
        });
    }
    Ok(file)
}

/// Raises the soft open-file limit to the hard one: every connection and every open segment is a
/// file descriptor (tuning.md, "Limits of the process").
fn raise_open_file_limit() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What a shard reports once it is serving.
struct Ready {
    shard: u16,
    addr: SocketAddr,
    bootstrap: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    kafka: Option<SocketAddr>,
}

type ReadySender = std::sync::mpsc::Sender<Result<Ready, (u16, String)>>;

impl Broker {
    /// Starts the broker on real files and returns once every shard serves.
    pub fn start(config: BrokerConfig) -> Result<Broker, ServerError> {
        let io = MmapIo {
            write_path: config.segment_write,
        };
        Self::start_with_io(config, io)
    }

    /// Starts the broker with its partition logs on `io` (tests run a whole broker on the
    /// simulated disk, [`crate::storage::SimIo`], and cut its power). The catalog and the lock
    /// file stay on the real data directory.
    pub fn start_with_io<I: Io>(config: BrokerConfig, io: I) -> Result<Broker, ServerError> {
        config.validate()?;
        raise_open_file_limit();
        let lock = lock_data_dir(&config.data_dir)?;
        let limits = CatalogLimits {
            topic_partitions_max: config.topic_partitions_max,
            partitions_max: config.partitions_max,
        };
        let fs: Arc<dyn crate::catalog::CatalogFs> = Arc::new(crate::catalog::OnIo(io.clone()));
        let catalog = Arc::new(Catalog::load(&config.data_dir, limits, fs.clone())?);
        let quotas = crate::flow::quota::Quotas::load(&config.data_dir, fs)?;
        // Committed offsets live in an internal topic, never aged out: the coordinators write a
        // snapshot of every position long before retention by bytes can reach it.
        let offsets_retention = (4 * config.segment_bytes as u64)
            .max(16 * crate::shard::groups::SNAPSHOT_EVERY_BYTES as u64);
        catalog.ensure_internal(
            crate::group::OFFSETS_TOPIC,
            &crate::protocol::TopicConfig {
                partitions: config.group_offsets_partitions,
                retention_bytes: Some(offsets_retention),
                retention_ms: None,
                visibility: Some(crate::protocol::Visibility::Written),
                ..Default::default()
            },
        )?;
        // Delayed records wait in their own internal topic; the scheduler deletes what no pending
        // entry needs, so it has no retention of its own.
        catalog.ensure_internal(
            crate::delay::DELAYS_TOPIC,
            &crate::protocol::TopicConfig {
                partitions: config.delay_partitions,
                retention_bytes: None,
                retention_ms: None,
                visibility: Some(crate::protocol::Visibility::Written),
                ..Default::default()
            },
        )?;
        let pool =
            Arc::new(
                FlushPool::new(config.flush_threads).map_err(|e| ServerError::DataDir {
                    dir: config.data_dir.clone(),
                    source: e,
                })?,
            );
        let config = Arc::new(config);
        let n = config.shards;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| flume::bounded::<Job<I>>(config.shard_queue_max))
            .unzip();
        let peers = Arc::new(senders);
        let shared = Arc::new(Shared {
            config: config.clone(),
            catalog,
            budget: MemoryBudget::new(config.memory_bytes_max),
            stats: (0..n).map(|_| Arc::new(Stats::default())).collect(),
            flow: Arc::new(crate::flow::Flow {
                floors: Default::default(),
                quotas,
            }),
            metrics: metrics::Metrics::new(n),
            pool: pool.clone(),
            shard_addrs: OnceLock::new(),
            kafka_addrs: OnceLock::new(),
            shutdown: Shutdown {
                flag: AtomicBool::new(false),
                event: Event::new(),
                draining: AtomicUsize::new(n as usize),
            },
            failpoint_shard_panic: Event::new(),
            started: std::time::Instant::now(),
        });
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for (id, inbox) in receivers.into_iter().enumerate() {
            let id = id as u16;
            let spec = ExecutorSpec {
                name: format!("levee-shard-{id}"),
                cpu: config.pin_cpus.then_some(id as usize % cpus),
                io_memory_bytes: config.io_memory_bytes,
                spin_before_park: Duration::from_micros(config.spin_before_park_us),
            };
            let (on_shard, ready, peers, io, pool) = (
                shared.clone(),
                ready_tx.clone(),
                peers.clone(),
                io.clone(),
                pool.clone(),
            );
            let started = runtime::start_executor(spec, move || async move {
                let deps = crate::shard::ShardDeps {
                    config: on_shard.config.clone(),
                    catalog: on_shard.catalog.clone(),
                    stats: on_shard.stats[id as usize].clone(),
                    flow: on_shard.flow.clone(),
                };
                let shard = Rc::new(Shard::new(id, deps, peers, io, pool));
                run_shard(shard, on_shard, inbox, ready).await;
            });
            match started {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop(&shared, handles);
                    return Err(ServerError::Shard {
                        shard: id,
                        message: e.to_string(),
                    });
                }
            }
        }
        drop(ready_tx);
        let mut addrs = vec![None; n as usize];
        let mut kafka_addrs = vec![None; n as usize];
        let (mut listen, mut metrics) = (None, None);
        for _ in 0..n {
            match ready_rx.recv_timeout(Duration::from_secs(300)) {
                Ok(Ok(r)) => {
                    addrs[r.shard as usize] = Some(r.addr);
                    kafka_addrs[r.shard as usize] = r.kafka;
                    listen = listen.or(r.bootstrap);
                    metrics = metrics.or(r.metrics);
                }
                Ok(Err((shard, message))) => {
                    stop(&shared, handles);
                    return Err(ServerError::Shard { shard, message });
                }
                Err(_) => {
                    stop(&shared, handles);
                    return Err(ServerError::Shard {
                        shard: 0,
                        message: "a shard did not become ready".into(),
                    });
                }
            }
        }
        let shard_addrs: Vec<SocketAddr> = addrs.into_iter().flatten().collect();
        let _ = shared.shard_addrs.set(shard_addrs.clone());
        let kafka_addrs: Vec<SocketAddr> = kafka_addrs.into_iter().flatten().collect();
        let _ = shared.kafka_addrs.set(kafka_addrs.clone());
        match (listen, metrics) {
            (Some(listen), Some(metrics)) => Ok(Broker {
                listen,
                metrics,
                shard_addrs,
                kafka_addrs,
                shared,
                handles,
                _pool: pool,
                _lock: lock,
            }),
            _ => {
                stop(&shared, handles);
                Err(ServerError::Shard {
                    shard: 0,
                    message: "bootstrap listener missing".into(),
                })
            }
        }
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Bytes of the memory budget in use now.
    pub fn memory_used(&self) -> usize {
        self.shared.budget.used()
    }

    /// Requests a graceful shutdown; [`Broker::join`] waits for it.
    pub fn shutdown(&self) {
        self.shared.shutdown.trigger();
    }

    /// Waits until every shard has stopped (after [`Broker::shutdown`]).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn stop(shared: &Shared, handles: Vec<ExecutorHandle>) {
    shared.shutdown.trigger();
    for h in handles {
        let _ = h.join();
    }
}

/// Fails the broker stop when a shard's thread ends other than by shutdown: dropped while the
/// thread unwinds from a panic that escaped every task, or when the shard's main task returns
/// early.
struct FailStop {
    shard: u16,
    shared: Arc<Shared>,
}

impl Drop for FailStop {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.shared.shutdown.is_set() {
            fatal(&format!(
                "shard {} stopped unexpectedly; the broker stops rather than run half-alive",
                self.shard
            ));
        }
    }
}

/// Prints one error line and exits with status 1.
fn fatal(message: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {message}");
    std::process::exit(1)
}

async fn run_shard<I: Io>(
    shard: Rc<Shard<I>>,
    shared: Arc<Shared>,
    inbox: flume::Receiver<Job<I>>,
    ready: ReadySender,
) {
    let id = shard.id;
    let guard = FailStop {
        shard: id,
        shared: shared.clone(),
    };
    // Forwarded work must be served before listeners open: another shard may already forward.
    let inbox_task = {
        let shard = shard.clone();
        runtime::spawn(async move {
            while let Ok(job) = inbox.recv_async().await {
                shard.run_job(job);
            }
        })
    };
    // Commit floors (flow control) are known before the first produce.
    shard.load_coordinators();
    let Some((report, mut tasks)) = listen(&shard, &shared, &ready) else {
        // Reported through `ready`; the broker stops the others.
        std::mem::forget(guard);
        return;
    };
    tasks.push(runtime::spawn(shard.clone().run_delays()));
    {
        // Metrics snapshots and liveness: rendering /metrics never waits for a shard.
        let (shard, shared) = (shard.clone(), shared.clone());
        tasks.push(runtime::spawn(async move {
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                shard.stats.alive_ms.store(now, Ordering::Relaxed);
                shared.metrics.publish(shard.id, shard.partition_snapshot());
                runtime::sleep(metrics::SNAPSHOT_INTERVAL).await;
            }
        }));
    }
    {
        let shard = shard.clone();
        let every = Duration::from_millis(shared.config.retention_check_ms);
        tasks.push(runtime::spawn(async move {
            loop {
                runtime::sleep(every).await;
                shard.housekeeping();
            }
        }));
    }
    let _ = ready.send(Ok(report));
    drop(ready);

    let failpoint = shared.failpoint_shard_panic.listen();
    let failed = futures_lite::future::or(
        async {
            shared.shutdown.wait().await;
            false
        },
        async {
            failpoint.await;
            true
        },
    )
    .await;
    if failed {
        panic!("failpoint shard-panic on shard {id}");
    }
    // Stop accepting; answer long polls now; connections finish what they started and close.
    drop(tasks);
    shard.stop();
    let stats = shared.stats[id as usize].clone();
    let grace = Instant::now() + SHUTDOWN_GRACE;
    while stats.connections.load(Ordering::Acquire) > 0 && Instant::now() < grace {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    // Keep serving forwarded work until every shard has drained its connections.
    shared.shutdown.draining.fetch_sub(1, Ordering::AcqRel);
    while shared.shutdown.draining.load(Ordering::Acquire) > 0 && Instant::now() < grace {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    drop(inbox_task);
    shard.close_all();
    drop(guard);
    tracing::info!(shard = id, "shard stopped");
}

/// Binds this shard's listeners and starts accepting; `None` after reporting a failure.
fn listen<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    ready: &ReadySender,
) -> Option<(Ready, Vec<runtime::Task<()>>)> {
    let config = &shared.config;
    let mut own_addr = config.listen;
    own_addr.set_port(0);
    let bind = |addr| runtime::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"));
    let bound = (|| -> Result<_, String> {
        let own = bind(own_addr)?;
        // Shard n's Kafka listener: the configured port + n (each shard is its own Kafka broker).
        let kafka = match config.kafka_listen {
            Some(mut k) => {
                if k.port() != 0 {
                    k.set_port(k.port() + shard.id);
                }
                Some(bind(k)?)
            }
            None => None,
        };
        if shard.id != 0 {
            return Ok((own, None, None, kafka));
        }
        Ok((
            own,
            Some(bind(config.listen)?),
            Some(bind(config.metrics_listen)?),
            kafka,
        ))
    })();
    let (own, bootstrap, metrics, kafka) = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err((shard.id, e)));
            return None;
        }
    };
    let local = |l: &runtime::TcpListener| l.local_addr().ok();
    let report = Ready {
        shard: shard.id,
        addr: local(&own).unwrap_or(own_addr),
        bootstrap: bootstrap.as_ref().and_then(local),
        metrics: metrics.as_ref().and_then(local),
        kafka: kafka.as_ref().and_then(local),
    };
    let mut tasks = vec![runtime::spawn(connection::accept_loop(
        own,
        shard.clone(),
        shared.clone(),
    ))];
    if let Some(b) = bootstrap {
        tasks.push(runtime::spawn(connection::accept_loop(
            b,
            shard.clone(),
            shared.clone(),
        )));
    }
    if let Some(k) = kafka {
        tasks.push(runtime::spawn(kafka::accept_loop(
            k,
            shard.clone(),
            shared.clone(),
        )));
    }
    if let Some(m) = metrics {
        tasks.push(runtime::spawn(metrics::serve(
            m,
            shard.clone(),
            shared.clone(),
        )));
    }
    Some((report, tasks))
}
