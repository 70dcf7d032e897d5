//! A session: what the broker knows about one client connection, passed to every request handler.
//!
//! Today that is where the connection comes from and the client id the client gave in its
//! ApiVersions handshake (for logs and metrics). It is the place where an authenticated principal
//! and the quotas that apply to it will live: handlers already receive it, so adding them touches
//! the handshake and the checks, not every handler's signature.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest client id kept (longer ones are cut, on a character boundary).
const CLIENT_ID_LEN_MAX: usize = 256;

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
}

impl Session {
    /// A new session for a connection accepted by `shard`.
    pub fn new(peer: Option<SocketAddr>, shard: u16) -> Session {
        Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            shard,
            client_id: RefCell::new(String::new()),
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
