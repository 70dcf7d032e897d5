//! The one path to a partition's owner: run an operation on a given shard, wherever the caller is.
//!
//! [`Shard::on_owner`] takes a closure `f(&shard) -> future`. On the owner itself it calls `f`
//! directly; elsewhere it sends `f` as a [`Job`] over the owner's bounded inbox and waits for the
//! answer on a one-shot channel. Either way `f` runs on the owner, its synchronous part (before
//! the future's first `.await`) at once and in arrival order: a produce appends there, so
//! requests sent to one partition are appended in the order the owner received them.
//!
//! Every operation is typed by its closure, so adding one needs no new enum variant, message type
//! or dispatch arm here. A full inbox makes the sender wait (backpressure, never unbounded
//! memory). A panic inside `f` or its future is caught on the owner and comes back as
//! [`ShardError::Internal`]; the owner goes on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::{Shard, ShardError, ShardId};
use crate::runtime;
use crate::storage::Io;

/// Work sent to another shard: called there, on its thread, with that shard.
pub type Job<I> = Box<dyn FnOnce(&Rc<Shard<I>>) + Send>;

impl<I: Io> Shard<I> {
    /// Runs `f` on shard `owner` and returns what its future yields.
    ///
    /// `f` must be `Send` (it crosses threads when `owner` is another shard); the future it
    /// returns need not be. Fails with [`ShardError::ShuttingDown`] when the owner no longer takes
    /// work, and with [`ShardError::Internal`] when `f` panicked.
    pub async fn on_owner<T, F, Fut>(self: &Rc<Self>, owner: ShardId, f: F) -> Result<T, ShardError>
    where
        T: Send + 'static,
        F: FnOnce(&Rc<Shard<I>>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if owner == self.id {
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| f(self)))
                .map_err(|p| self.internal(p.as_ref()))?;
            return runtime::isolated(run)
                .await
                .map_err(|message| self.internal_message(message));
        }
        let (reply, answer) = flume::bounded::<Result<T, ShardError>>(1);
        let job: Job<I> = Box::new(move |shard: &Rc<Shard<I>>| {
            let run = match std::panic::catch_unwind(AssertUnwindSafe(|| f(shard))) {
                Ok(run) => run,
                Err(p) => {
                    let _ = reply.send(Err(shard.internal(p.as_ref())));
                    return;
                }
            };
            let shard = shard.clone();
            runtime::spawn_detached(async move {
                let out = runtime::isolated(run)
                    .await
                    .map_err(|message| shard.internal_message(message));
                let _ = reply.send(out);
            });
        });
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        self.peers[owner as usize]
            .send_async(job)
            .await
            .map_err(|_| ShardError::ShuttingDown)?;
        answer
            .recv_async()
            .await
            .unwrap_or(Err(ShardError::ShuttingDown))
    }

    /// Runs one job received from another shard (the inbox loop calls this).
    pub fn run_job(self: &Rc<Self>, job: Job<I>) {
        job(self);
    }

    fn internal(&self, payload: &(dyn std::any::Any + Send)) -> ShardError {
        self.internal_message(runtime::panic_message(payload))
    }

    fn internal_message(&self, message: String) -> ShardError {
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(shard = self.id, %message, "operation panicked; answered Internal");
        ShardError::Internal {
            shard: self.id,
            message,
        }
    }
}
