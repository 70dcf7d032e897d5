//! A one-value channel that is at once a `std::future::Future`, a blocking wait, and a callback.
//!
//! The client runs on plain threads (a reader thread per connection, a producer thread), yet its
//! users may live inside any async executor or none. One small primitive serves all three: the
//! sender stores the value under a mutex, then wakes whoever is interested — a `Waker` (async), a
//! `Condvar` (blocking), or a registered callback (the producer's completion path, which must not
//! park a thread per in-flight batch).
//!
//! A sender dropped without a value completes the channel with `None`, so a receiver can never
//! wait forever on a value that will not come.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Locks a mutex, ignoring poison: every critical section in the client leaves its state
/// consistent before anything that could panic, so a panic elsewhere must not cascade.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Callback<T> = Box<dyn FnOnce(Option<T>) + Send>;

struct State<T> {
    value: Option<T>,
    /// The sender is gone (with or without a value).
    done: bool,
    waker: Option<Waker>,
    callback: Option<Callback<T>>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The sending half: completes the channel once.
pub(crate) struct Sender<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A new channel.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            done: false,
            waker: None,
            callback: None,
        }),
        ready: Condvar::new(),
    });
    (
        Sender {
            shared: Some(shared.clone()),
        },
        Receiver { shared },
    )
}

/// A receiver that already holds `value`.
pub(crate) fn ready<T>(value: T) -> Receiver<T> {
    let (tx, rx) = channel();
    tx.send(value);
    rx
}

impl<T> Sender<T> {
    /// Completes the channel with `value`.
    pub(crate) fn send(mut self, value: T) {
        self.complete(Some(value));
    }

    fn complete(&mut self, value: Option<T>) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let mut st = lock(&shared.state);
        if let Some(callback) = st.callback.take() {
            st.done = true;
            drop(st);
            // Outside the lock: the callback may take other locks or send on other channels.
            callback(value);
            return;
        }
        st.value = value;
        st.done = true;
        let waker = st.waker.take();
        drop(st);
        shared.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.complete(None);
    }
}

/// The receiver's wait ran out before the sender completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl<T> Receiver<T> {
    /// Polls for the value: `Ready(None)` when the sender was dropped without one (or the value
    /// was already taken).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = lock(&self.shared.state);
        if st.done {
            return Poll::Ready(st.value.take());
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Blocks until the sender completes.
    pub(crate) fn wait(self) -> Option<T> {
        let mut st = lock(&self.shared.state);
        while !st.done {
            st = self
                .shared
                .ready
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.value.take()
    }

    /// Blocks until the sender completes or `deadline` passes; the receiver stays usable after
    /// `Elapsed`.
    pub(crate) fn wait_deadline(&mut self, deadline: Instant) -> Result<Option<T>, Elapsed> {
        let mut st = lock(&self.shared.state);
        while !st.done {
            let now = Instant::now();
            if now >= deadline {
                return Err(Elapsed);
            }
            st = self
                .shared
                .ready
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(st.value.take())
    }

    /// Runs `callback` with the value once the sender completes: right now on this thread if it
    /// already has, else later on the sender's thread. The callback must not block.
    pub(crate) fn on_complete(self, callback: impl FnOnce(Option<T>) + Send + 'static)
    where
        T: Send + 'static,
    {
        let mut st = lock(&self.shared.state);
        if st.done {
            let value = st.value.take();
            drop(st);
            callback(value);
            return;
        }
        st.callback = Some(Box::new(callback));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Recv(Receiver<u32>);
    impl Future for Recv {
        type Output = Option<u32>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.0.poll_recv(cx)
        }
    }

    #[test]
    fn given_pending_receiver_when_sent_should_wake_and_yield_value() {
        let (tx, rx) = channel::<u32>();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Recv(rx);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Pending);
        tx.send(7);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(Some(7)));
    }

    #[test]
    fn given_dropped_sender_when_waiting_should_yield_none() {
        let (tx, rx) = channel::<u32>();
        let t = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.wait(), None);
        t.join().unwrap();
    }

    #[test]
    fn given_no_sender_progress_when_waiting_with_deadline_should_elapse() {
        let (_tx, mut rx) = channel::<u32>();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(rx.wait_deadline(deadline), Err(Elapsed));
    }

    #[test]
    fn given_callback_when_sent_should_run_with_value() {
        let (tx, rx) = channel::<u32>();
        let (done_tx, done_rx) = channel::<u32>();
        rx.on_complete(move |v| done_tx.send(v.unwrap_or(0)));
        tx.send(5);
        assert_eq!(done_rx.wait(), Some(5));
        let rx = ready(9);
        let (done_tx, done_rx) = channel::<u32>();
        rx.on_complete(move |v| done_tx.send(v.unwrap_or(0)));
        assert_eq!(done_rx.wait(), Some(9));
    }
}
