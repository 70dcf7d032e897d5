//! The runtime layer: the only module that names glommio.
//!
//! Everything else asks this module to spawn a task, sleep, run blocking work, or accept and read
//! a socket, so that the shard and server logic reads as plain async Rust and a change of runtime
//! touches this file alone. The types here are thin aliases and wrappers, not abstractions with
//! their own behaviour.
//!
//! Panics: a task spawned with [`spawn_isolated`] turns a panic into a value instead of unwinding
//! into the executor, which would otherwise take the whole shard down with it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

/// A listening TCP socket of the current shard.
pub type TcpListener = glommio::net::TcpListener;
/// A TCP connection owned by the current shard.
pub type TcpStream = glommio::net::TcpStream;
/// A task handle: dropping it cancels the task; `.await` gives its output.
pub type Task<T> = glommio::Task<T>;
/// The handle of a shard's executor thread.
pub type ExecutorHandle = glommio::ExecutorJoinHandle<()>;

/// Spawns `future` on the current shard, detached: it runs to completion on its own.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Spawns `future` on the current shard; the task stops when the handle is dropped.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Runs `future`, turning a panic inside it into `Err(message)`.
pub async fn isolated<T>(future: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// Spawns `future` detached, logging a panic instead of letting it unwind into the executor.
pub fn spawn_isolated(what: &'static str, future: impl Future<Output = ()> + 'static) {
    spawn_detached(async move {
        if let Err(message) = isolated(future).await {
            tracing::error!(task = what, %message, "task panicked; its work was abandoned");
        }
    });
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Waits `duration`.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Waits until `deadline` (at once if it has passed).
pub async fn sleep_until(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// Runs `future` until it completes or `deadline` passes (`None`).
pub async fn until<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep_until(deadline).await;
        None
    })
    .await
}

/// A boxed future of this shard (not `Send`).
pub type LocalFuture<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Resolves when the first of `futures` does (never, for none). Polls them in a loop: constant
/// stack depth for any number of futures, where a fold of `or` would nest one level per future.
pub async fn first_of(mut futures: Vec<LocalFuture<'_>>) {
    futures_lite::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Yields to the other tasks of this shard.
pub async fn yield_now() {
    futures_lite::future::yield_now().await;
}

/// Runs blocking `work` (file system calls that may take long: fsyncs, directory removal) on the
/// shard's blocking thread, so the shard keeps serving. A panic in `work` is returned as `Err`.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    // glommio's spawn_blocking must not see a panic (it would read an uninitialized result).
    let work = move || {
        std::panic::catch_unwind(AssertUnwindSafe(work))
            .map_err(|payload| panic_message(payload.as_ref()))
    };
    glommio::executor().spawn_blocking(work).await
}

/// How a shard's executor is placed and sized.
pub struct ExecutorSpec {
    /// Thread name.
    pub name: String,
    /// Pin to this CPU, or float.
    pub cpu: Option<usize>,
    /// glommio registered I/O memory per ring (locked memory).
    pub io_memory_bytes: usize,
    /// Spin this long before parking; zero disables spinning.
    pub spin_before_park: Duration,
}

/// Starts an executor thread running `main` (built on that thread).
pub fn start_executor<F, Fut>(spec: ExecutorSpec, main: F) -> std::io::Result<ExecutorHandle>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let placement = match spec.cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let mut builder = glommio::LocalExecutorBuilder::new(placement)
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes);
    if !spec.spin_before_park.is_zero() {
        builder = builder.spin_before_park(spec.spin_before_park);
    }
    builder
        .spawn(main)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Binds a listener on the current shard.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}
