//! The broker's memory budget for connections (`memory_bytes_max`).
//!
//! Everything a client can make the broker hold in anonymous memory is charged here before it is
//! allocated: each connection's fixed cost, receive buffers, request frames (a large frame is
//! charged as its bytes arrive, never from its header alone), copies forwarded to another shard,
//! queued responses, and the spare frame buffers connections keep for reuse. A [`Charge`] gives
//! its bytes back when dropped, on whatever thread that happens.
//!
//! Readers of the network wait for room ([`MemoryBudget::charge`]): a connection that cannot get
//! its next buffer is simply not read until memory frees up, which pushes back on its client
//! through TCP. Work already accepted never waits ([`MemoryBudget::force`]): a response must be
//! queued to be written, and refusing it would only hold its request longer. Such charges are
//! bounded by the requests in flight, which the readers bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use event_listener::Event;

/// A byte budget shared by every shard.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    max: usize,
    freed: Event,
}

/// Bytes charged to a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicUsize::new(0),
            max,
            freed: Event::new(),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }

    /// True when more than three quarters are used: spare buffers are then not kept.
    pub fn under_pressure(&self) -> bool {
        self.used() > self.max / 4 * 3
    }

    /// Charges `bytes` if they fit.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(bytes).filter(|&n| n <= self.max)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Charge {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes`, waiting until they fit. `bytes` must not exceed the budget.
    pub async fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        assert!(bytes <= self.max, "a single charge larger than the budget");
        loop {
            let freed = self.freed.listen();
            if let Some(c) = self.try_charge(bytes) {
                return c;
            }
            freed.await;
        }
    }

    /// Charges `bytes` whether or not they fit (work already accepted; see the module doc).
    pub fn force(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
            debug_assert!(before >= bytes, "budget given back more than was charged");
            self.freed.notify(usize::MAX);
        }
    }
}

impl Charge {
    /// An empty charge on `budget` (grown later).
    pub fn none(budget: &Arc<MemoryBudget>) -> Charge {
        Charge {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the charge to `bytes` in total, waiting for room.
    pub async fn grow_to(&mut self, bytes: usize) {
        if bytes > self.bytes {
            let more = self.budget.charge(bytes - self.bytes).await;
            self.absorb(more);
        }
    }

    /// Adds another charge of the same budget to this one.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_full_budget_when_charged_should_refuse_until_bytes_come_back() {
        let b = MemoryBudget::new(100);
        let a = b.try_charge(60).unwrap();
        assert!(b.try_charge(41).is_none());
        let mut c = b.try_charge(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        c.shrink_to(10);
        assert_eq!(b.used(), 10);
        let forced = b.force(500);
        assert_eq!(b.used(), 510);
        assert!(b.try_charge(1).is_none());
        drop(forced);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn given_a_waiting_charge_when_bytes_are_freed_should_complete() {
        let b = MemoryBudget::new(10);
        let held = b.try_charge(10).unwrap();
        let b2 = b.clone();
        let t = std::thread::spawn(move || futures_lite::future::block_on(b2.charge(5)).bytes());
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held);
        assert_eq!(t.join().unwrap(), 5);
    }
}
