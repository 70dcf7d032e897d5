//! A session: what the broker knows about one client connection, passed to every request handler.
//!
//! Today that is where the connection comes from and the client id the client gave in its
//! ApiVersions handshake (for logs and metrics). It is the place where an authenticated principal
//! and the quotas that apply to it will live: handlers already receive it, so adding them touches
//! the handshake and the checks, not every handler's signature.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::CLIENT_ID_LEN_MAX;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One client connection's identity.
#[derive(Debug)]
pub struct Session {
    /// Unique per connection for the life of the process, for logs.
    pub id: u64,
    /// The client's address, when the socket could tell.
    pub peer: Option<SocketAddr>,
    /// The shard whose listener accepted the connection.
    pub shard: u16,
    client_id: RefCell<String>,
    /// Fire-and-forget Produce requests a quota holds keep their arrival order.
    pub held: HoldQueue,
}

/// Tickets in arrival order: a request holding ticket `t` may go once every earlier ticket has
/// gone or was abandoned. A fire-and-forget Produce request that a quota makes wait takes one,
/// so that requests arriving behind it (waiting less, or not at all) cannot overtake it.
#[derive(Debug, Default)]
pub struct HoldQueue {
    next: Cell<u64>,
    done: Cell<u64>,
    /// Tickets given up before their turn (the request was dropped).
    abandoned: RefCell<BTreeSet<u64>>,
    turn: event_listener::Event,
}

impl HoldQueue {
    /// True when no ticket is outstanding: a request may go at once.
    pub fn is_idle(&self) -> bool {
        self.done.get() == self.next.get()
    }

    /// The next ticket, in arrival order. Must be taken before the request first awaits.
    pub fn ticket(&self) -> Ticket<'_> {
        let t = self.next.get();
        self.next.set(t + 1);
        Ticket {
            queue: self,
            ticket: t,
            gone: false,
        }
    }

    fn advance(&self) {
        let mut done = self.done.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while abandoned.remove(&done) {
            done += 1;
        }
        self.done.set(done);
        self.turn.notify(usize::MAX);
    }
}

/// A place in a [`HoldQueue`]; dropped without [`Ticket::go`], it gives the place up.
pub struct Ticket<'a> {
    queue: &'a HoldQueue,
    ticket: u64,
    gone: bool,
}

impl Ticket<'_> {
    /// Waits until every earlier ticket has gone.
    pub async fn turn(&self) {
        loop {
            let l = self.queue.turn.listen();
            if self.queue.done.get() == self.ticket {
                return;
            }
            l.await;
        }
    }

    /// This ticket's request went (after [`Ticket::turn`]): the next may go.
    pub fn go(mut self) {
        debug_assert_eq!(self.queue.done.get(), self.ticket);
        self.gone = true;
        self.queue.advance();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        if self.queue.done.get() == self.ticket {
            self.queue.advance();
        } else {
            self.queue.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

impl Session {
    /// A new session for a connection accepted by `shard`.
    pub fn new(peer: Option<SocketAddr>, shard: u16) -> Session {
        Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            shard,
            client_id: RefCell::new(String::new()),
            held: HoldQueue::default(),
        }
    }

    /// The client id from the handshake (empty before it).
    pub fn client_id(&self) -> String {
        self.client_id.borrow().clone()
    }

    /// Records the client id a client announced in ApiVersions.
    pub fn set_client_id(&self, id: &str) {
        let mut cut = id.len().min(CLIENT_ID_LEN_MAX);
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        *self.client_id.borrow_mut() = id[..cut].to_string();
    }
}
