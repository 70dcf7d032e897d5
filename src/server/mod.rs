//! The server: the broker's lifecycle, listeners and connections.
//!
//! [`Broker::start`] locks the data directory, loads the catalog, starts one glommio executor per
//! shard (pinned to its core when `pin_cpus`), and waits until every shard has recovered its
//! partitions and bound its listeners. Shard 0 also binds the bootstrap listener (`--listen`) and
//! the metrics listener. Every shard accepts on its own port, advertised in Metadata, so a
//! partition-aware client reaches the owning shard with no cross-core hop; any request also works
//! on any connection, through forwarding.
//!
//! Shutdown ([`Broker::shutdown`]): stop accepting, let in-flight requests finish (bounded by a
//! grace period), flush and close every log.
//!
//! This module owns sockets and the runtime. Storage is reached only through `shard`.

mod connection;
mod handler;
mod metrics;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_listener::Event;
use glommio::{LocalExecutorBuilder, Placement};

use crate::catalog::{Catalog, CatalogError};
use crate::config::BrokerConfig;
use crate::shard::{Shard, ShardOp, Stats};

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
    /// The topic catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
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
}

/// What every shard shares.
pub(crate) struct Shared {
    pub config: Arc<BrokerConfig>,
    pub catalog: Arc<Catalog>,
    pub peers: Arc<Vec<flume::Sender<ShardOp>>>,
    pub stats: Vec<Arc<Stats>>,
    pub shard_addrs: OnceLock<Vec<SocketAddr>>,
    pub shutdown: Shutdown,
}

/// A running broker.
pub struct Broker {
    /// The bootstrap listener's address.
    pub listen: SocketAddr,
    /// The metrics listener's address.
    pub metrics: SocketAddr,
    /// Every shard's own listener, by shard number.
    pub shard_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
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

/// What a shard reports once it is serving.
struct Ready {
    shard: u16,
    addr: SocketAddr,
    bootstrap: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

impl Broker {
    /// Starts the broker and returns once every shard serves.
    pub fn start(config: BrokerConfig) -> Result<Broker, ServerError> {
        config.validate().map_err(|e| ServerError::Shard {
            shard: 0,
            message: e.to_string(),
        })?;
        let lock = lock_data_dir(&config.data_dir)?;
        let catalog = Arc::new(Catalog::load(&config.data_dir)?);
        let config = Arc::new(config);
        let n = config.shards;
        let mut senders = Vec::with_capacity(n as usize);
        let mut receivers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (tx, rx) = flume::bounded(config.shard_queue_max);
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            catalog,
            peers: Arc::new(senders),
            stats: (0..n).map(|_| Arc::new(Stats::default())).collect(),
            shard_addrs: OnceLock::new(),
            shutdown: Shutdown {
                flag: AtomicBool::new(false),
                event: Event::new(),
            },
        });
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, (u16, String)>>();
        let mut handles = Vec::new();
        for (id, inbox) in receivers.into_iter().enumerate() {
            let id = id as u16;
            let placement = if config.pin_cpus {
                Placement::Fixed(id as usize % cpus)
            } else {
                Placement::Unbound
            };
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("levee-shard-{id}"))
                .io_memory(config.io_memory_bytes);
            if config.spin_before_park_us > 0 {
                builder =
                    builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
            }
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let handle = builder
                .spawn(move || async move {
                    run_shard(id, shared, inbox, ready).await;
                })
                .map_err(|e| ServerError::Shard {
                    shard: id,
                    message: e.to_string(),
                })?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut addrs = vec![None; n as usize];
        let (mut listen, mut metrics) = (None, None);
        for _ in 0..n {
            match ready_rx.recv_timeout(Duration::from_secs(300)) {
                Ok(Ok(r)) => {
                    addrs[r.shard as usize] = Some(r.addr);
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
        match (listen, metrics) {
            (Some(listen), Some(metrics)) => Ok(Broker {
                listen,
                metrics,
                shard_addrs,
                shared,
                handles,
                _lock: lock,
            }),
            _ => Err(ServerError::Shard {
                shard: 0,
                message: "bootstrap listener missing".into(),
            }),
        }
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Requests a graceful shutdown; [`Broker::join`] waits for it.
    pub fn shutdown(&self) {
        self.shared.shutdown.flag.store(true, Ordering::Release);
        self.shared.shutdown.event.notify(usize::MAX);
    }

    /// Waits until every shard has stopped (after [`Broker::shutdown`]).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn stop(shared: &Shared, handles: Vec<glommio::ExecutorJoinHandle<()>>) {
    shared.shutdown.flag.store(true, Ordering::Release);
    shared.shutdown.event.notify(usize::MAX);
    for h in handles {
        let _ = h.join();
    }
}

fn bind(addr: SocketAddr) -> Result<glommio::net::TcpListener, String> {
    glommio::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

async fn run_shard(
    id: u16,
    shared: Arc<Shared>,
    inbox: flume::Receiver<ShardOp>,
    ready: std::sync::mpsc::Sender<Result<Ready, (u16, String)>>,
) {
    let config = shared.config.clone();
    let shard = std::rc::Rc::new(Shard::new(
        id,
        config.clone(),
        shared.catalog.clone(),
        shared.peers.clone(),
        shared.stats[id as usize].clone(),
    ));
    if let Err(e) = shard.open_owned() {
        let _ = ready.send(Err((id, e.to_string())));
        return;
    }
    // Forwarded work must be served before listeners open: another shard may already forward.
    let inbox_task = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Ok(op) = inbox.recv_async().await {
                glommio::spawn_local(shard.clone().handle_op(op)).detach();
            }
        })
    };
    let mut shard_addr = config.listen;
    shard_addr.set_port(0);
    let listeners = (|| -> Result<_, String> {
        let own = bind(shard_addr)?;
        let (bootstrap, metrics) = if id == 0 {
            (
                Some(bind(config.listen)?),
                Some(bind(config.metrics_listen)?),
            )
        } else {
            (None, None)
        };
        Ok((own, bootstrap, metrics))
    })();
    let (own, bootstrap, metrics) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err((id, e)));
            return;
        }
    };
    let local = |l: &glommio::net::TcpListener| l.local_addr().ok();
    let report = Ready {
        shard: id,
        addr: local(&own).unwrap_or(shard_addr),
        bootstrap: bootstrap.as_ref().and_then(local),
        metrics: metrics.as_ref().and_then(local),
    };
    let mut tasks = vec![inbox_task];
    tasks.push(glommio::spawn_local(connection::accept_loop(
        own,
        shard.clone(),
        shared.clone(),
    )));
    if let Some(b) = bootstrap {
        tasks.push(glommio::spawn_local(connection::accept_loop(
            b,
            shard.clone(),
            shared.clone(),
        )));
    }
    if let Some(m) = metrics {
        tasks.push(glommio::spawn_local(metrics::serve(m, shared.clone())));
    }
    {
        let shard = shard.clone();
        let every = Duration::from_millis(config.retention_check_ms);
        tasks.push(glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                shard.housekeeping();
            }
        }));
    }
    let _ = ready.send(Ok(report));
    drop(ready);

    shared.shutdown.wait().await;
    // Stop accepting; connections notice the shutdown, finish what they started and close.
    let inbox_task = tasks.remove(0);
    drop(tasks);
    let stats = shared.stats[id as usize].clone();
    let grace = std::time::Instant::now() + Duration::from_secs(10);
    while stats.connections.load(Ordering::Acquire) > 0 && std::time::Instant::now() < grace {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Keep serving forwarded work a moment longer: other shards may be finishing requests.
    glommio::timer::sleep(Duration::from_millis(50)).await;
    drop(inbox_task);
    shard.close_all();
    tracing::info!(shard = id, "shard stopped");
}
