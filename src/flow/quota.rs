//! Quotas: token buckets on produce and fetch bytes/s and messages/s, per client id and per topic,
//! shared by every shard.
//!
//! Owns the quota table (what is limited, how much), its buckets, and its file
//! (`<data_dir>/quotas`, replaced atomically and durably on every change, read at start). A client
//! spreading its load over every shard draws from one bucket: the table is behind one lock that
//! all shards take, only while a quota exists (an atomic flag keeps the no-quota path lock-free).
//!
//! Enforcement is *admit, then charge*: a block is admitted while its buckets are not in debt
//! (bytes are charged at admission, messages once the count is known), so a bucket may go below
//! zero by at most what was in flight; while it is, blocks are answered `Throttled` with the time
//! until the debt is repaid. A bucket holds at most [`BURST_MS`] of its rate, so a client that was
//! idle cannot then send far above its rate.
//!
//! Must not touch: logs, sockets or the wire. The handlers ask and charge; they build responses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::catalog::CatalogFs;

/// Most a bucket holds, in milliseconds of its rate: the burst an idle client may send at once.
pub const BURST_MS: u64 = 100;
/// Longest throttle handed out, whatever the debt: a client checks back at least this often.
pub const THROTTLE_MS_MAX: u32 = 5_000;
/// Name of the quota file in the data directory.
pub const QUOTA_FILE: &str = "quotas";

pub use crate::protocol::{QuotaEntity as Entity, QuotaLimits as Limits};

/// Which way traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Records into the broker.
    Produce,
    /// Records out to consumers.
    Fetch,
}

impl Direction {
    /// Indices of the (bytes, messages) buckets of this direction.
    fn slots(self) -> (usize, usize) {
        match self {
            Direction::Produce => (0, 1),
            Direction::Fetch => (2, 3),
        }
    }
}

/// Why a quota change was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A rate of 0, an empty name, or nothing to set.
    #[error("invalid quota: {0}")]
    Invalid(String),
    /// The quota file could not be written: the change was not made.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The quota file exists but cannot be read as one.
    #[error("{path} line {line}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// A token bucket. Tokens may go negative: a debt, repaid at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: Bucket::capacity(rate),
            at: now,
        }
    }

    fn capacity(rate: u64) -> f64 {
        // At least one unit, so that a rate below 1000/BURST_MS still admits something.
        (rate as f64 * BURST_MS as f64 / 1000.0).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(Bucket::capacity(self.rate));
    }

    /// Milliseconds until the bucket is out of debt; 0 when it is not in debt.
    fn wait_ms(&self) -> u32 {
        if self.tokens >= 0.0 {
            return 0;
        }
        let ms = (-self.tokens * 1000.0 / self.rate as f64).ceil();
        (ms as u32).clamp(1, THROTTLE_MS_MAX)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    limits: Limits,
    buckets: [Option<Bucket>; 4],
}

impl Entry {
    fn new(limits: Limits, now: Instant) -> Entry {
        Entry {
            buckets: limits.as_array().map(|r| r.map(|r| Bucket::new(r, now))),
            limits,
        }
    }

    fn wait_ms(&mut self, dir: Direction, now: Instant) -> u32 {
        let (b, m) = dir.slots();
        self.buckets
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i == b || *i == m)
            .filter_map(|(_, bucket)| bucket.as_mut())
            .map(|bucket| {
                bucket.refill(now);
                bucket.wait_ms()
            })
            .max()
            .unwrap_or(0)
    }

    fn charge(&mut self, slot: usize, amount: u64) {
        if let Some(bucket) = self.buckets[slot].as_mut() {
            bucket.tokens -= amount as f64;
        }
    }
}

/// Quotas by client id and by topic, apart, so that the hot path looks a block's two up by
/// `&str` without building a key.
#[derive(Debug, Default)]
struct Table {
    clients: BTreeMap<String, Entry>,
    topics: BTreeMap<String, Entry>,
}

impl Table {
    fn side(&mut self, entity: &Entity) -> &mut BTreeMap<String, Entry> {
        match entity {
            Entity::Client(_) => &mut self.clients,
            Entity::Topic(_) => &mut self.topics,
        }
    }

    fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.topics.is_empty()
    }

    /// Every quota, clients first, by name.
    fn list(&self) -> Vec<(Entity, Limits)> {
        let clients = self
            .clients
            .iter()
            .map(|(n, e)| (Entity::Client(n.clone()), e.limits));
        let topics = self
            .topics
            .iter()
            .map(|(n, e)| (Entity::Topic(n.clone()), e.limits));
        clients.chain(topics).collect()
    }

    /// The entries that apply to traffic of `client` to or from `topic`.
    fn applying(&mut self, client: &str, topic: &str) -> impl Iterator<Item = &mut Entry> {
        self.clients
            .get_mut(client)
            .into_iter()
            .chain(self.topics.get_mut(topic))
    }
}

/// The quota table every shard shares.
pub struct Quotas {
    path: Option<(PathBuf, Arc<dyn CatalogFs>)>,
    table: Mutex<Table>,
    /// Any quota set: the hot path skips the lock when none is.
    active: AtomicBool,
    /// Serialises changes with their file writes, so the file always matches the last change.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("quotas", &self.list())
            .finish()
    }
}

impl Default for Quotas {
    /// No quota, kept in memory only.
    fn default() -> Self {
        Quotas {
            path: None,
            table: Mutex::default(),
            active: AtomicBool::new(false),
            writer: Mutex::new(()),
        }
    }
}

impl Quotas {
    /// Loads the quotas of `data_dir` (none when its file does not exist); changes are written
    /// back there.
    pub fn load(data_dir: &std::path::Path, fs: Arc<dyn CatalogFs>) -> Result<Quotas, QuotaError> {
        let path = data_dir.join(QUOTA_FILE);
        let text = match fs.read_file(&path) {
            Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| QuotaError::Corrupt {
                path: path.clone(),
                line: 0,
                what: "not UTF-8".into(),
            })?,
            Ok(None) => String::new(),
            Err(source) => return Err(QuotaError::Io { path, source }),
        };
        let entries = decode(&text).map_err(|(line, what)| QuotaError::Corrupt {
            path: path.clone(),
            line,
            what,
        })?;
        let now = Instant::now();
        let quotas = Quotas {
            path: Some((path, fs)),
            ..Quotas::default()
        };
        {
            let mut table = quotas.table();
            for (entity, limits) in entries {
                let name = entity.name().to_string();
                table.side(&entity).insert(name, Entry::new(limits, now));
            }
            quotas.active.store(!table.is_empty(), Ordering::Release);
        }
        Ok(quotas)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the limits `change` gives on `entity` (others it already has stay), durably. Returns
    /// the entity's limits now.
    pub fn set(&self, entity: Entity, change: Limits) -> Result<Limits, QuotaError> {
        if entity.name().is_empty() {
            return Err(QuotaError::Invalid(format!(
                "a {} quota needs a name",
                entity.kind()
            )));
        }
        let longest = match entity {
            Entity::Client(_) => crate::protocol::CLIENT_ID_LEN_MAX,
            Entity::Topic(_) => crate::protocol::TOPIC_NAME_LEN_MAX,
        };
        if entity.name().len() > longest {
            return Err(QuotaError::Invalid(format!(
                "a {} name is at most {longest} bytes (the broker keeps no longer ones)",
                entity.kind()
            )));
        }
        if change.is_empty() {
            return Err(QuotaError::Invalid("no limit given".into()));
        }
        if change.as_array().contains(&Some(0)) {
            return Err(QuotaError::Invalid(
                "a rate must be at least 1 per second (delete the quota to lift it)".into(),
            ));
        }
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let limits = self
            .table()
            .side(&entity)
            .get(entity.name())
            .map_or(change, |e| e.limits.merged(&change));
        let mut all = self.list();
        all.retain(|(e, _)| *e != entity);
        all.push((entity.clone(), limits));
        self.persist(&all)?;
        let mut table = self.table();
        // Buckets keep their state when only a rate changes, so a change cannot reset a debt.
        let now = Instant::now();
        let name = entity.name().to_string();
        let entry = table
            .side(&entity)
            .entry(name)
            .or_insert_with(|| Entry::new(limits, now));
        let rates = limits.as_array();
        for (slot, rate) in rates.iter().enumerate() {
            entry.buckets[slot] = match (entry.buckets[slot].take(), *rate) {
                (_, None) => None,
                (Some(mut b), Some(r)) => {
                    b.refill(now);
                    b.rate = r;
                    b.tokens = b.tokens.min(Bucket::capacity(r));
                    Some(b)
                }
                (None, Some(r)) => Some(Bucket::new(r, now)),
            };
        }
        entry.limits = limits;
        self.active.store(true, Ordering::Release);
        Ok(limits)
    }

    /// Removes every limit on `entity`, durably. False when it had none.
    pub fn delete(&self, entity: &Entity) -> Result<bool, QuotaError> {
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = self.list();
        let before = all.len();
        all.retain(|(e, _)| e != entity);
        if all.len() == before {
            return Ok(false);
        }
        self.persist(&all)?;
        let mut table = self.table();
        table.side(entity).remove(entity.name());
        self.active.store(!table.is_empty(), Ordering::Release);
        Ok(true)
    }

    /// Every quota, clients first, by name.
    pub fn list(&self) -> Vec<(Entity, Limits)> {
        self.table().list()
    }

    fn persist(&self, all: &[(Entity, Limits)]) -> Result<(), QuotaError> {
        let Some((path, fs)) = &self.path else {
            return Ok(());
        };
        fs.write_file_durable(path, encode(all).as_bytes())
            .map_err(|source| QuotaError::Io {
                path: path.clone(),
                source,
            })
    }

    /// True when any quota is set: callers skip looking up their client id otherwise.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// How long traffic of `client` to or from `topic` must wait in direction `dir`: the longest
    /// debt among the buckets that apply; 0 when it may go now.
    pub fn wait_ms(&self, dir: Direction, client: &str, topic: &str) -> u32 {
        if !self.active.load(Ordering::Acquire) {
            return 0;
        }
        let now = Instant::now();
        let mut table = self.table();
        table
            .applying(client, topic)
            .map(|e| e.wait_ms(dir, now))
            .max()
            .unwrap_or(0)
    }

    /// Admits a block of `bytes` if no bucket that applies is in debt, charging its bytes;
    /// otherwise returns how long to wait. One look at the table for both.
    pub fn admit(&self, dir: Direction, client: &str, topic: &str, bytes: u64) -> Result<(), u32> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = Instant::now();
        let mut table = self.table();
        let wait = table
            .applying(client, topic)
            .map(|e| e.wait_ms(dir, now))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Err(wait);
        }
        for e in table.applying(client, topic) {
            e.charge(dir.slots().0, bytes);
        }
        Ok(())
    }

    /// Charges `bytes` and `messages` of traffic in direction `dir` to the buckets of `client`
    /// and `topic`.
    pub fn charge(&self, dir: Direction, client: &str, topic: &str, bytes: u64, messages: u64) {
        if !self.active.load(Ordering::Acquire) || (bytes == 0 && messages == 0) {
            return;
        }
        let (b, m) = dir.slots();
        for entry in self.table().applying(client, topic) {
            entry.charge(b, bytes);
            entry.charge(m, messages);
        }
    }
}

const FIELDS: [&str; 4] = [
    "produce_bytes",
    "produce_messages",
    "fetch_bytes",
    "fetch_messages",
];

/// Names are written with `%XX` for `%`, spaces, `=` and anything outside printable ASCII, so
/// that every client id survives a round trip and a line splits on spaces.
fn escape(name: &str, out: &mut String) {
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The quota file: one line per entity, `client|topic NAME key=rate ...`.
pub fn encode(all: &[(Entity, Limits)]) -> String {
    let mut out = String::from("# levee quotas: rates per second; written by the broker\n");
    for (entity, limits) in all {
        out.push_str(entity.kind());
        out.push(' ');
        escape(entity.name(), &mut out);
        for (field, rate) in FIELDS.iter().zip(limits.as_array()) {
            if let Some(r) = rate {
                let _ = write!(out, " {field}={r}");
            }
        }
        out.push('\n');
    }
    out
}

/// Parses a quota file; on failure, the 1-based line and what is wrong.
pub fn decode(text: &str) -> Result<Vec<(Entity, Limits)>, (usize, String)> {
    let mut all = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split(' ');
        let kind = words.next().unwrap_or_default();
        let name = words
            .next()
            .and_then(unescape)
            .filter(|n| !n.is_empty())
            .ok_or((n, "missing or malformed name".to_string()))?;
        let entity = match kind {
            "client" => Entity::Client(name),
            "topic" => Entity::Topic(name),
            other => return Err((n, format!("unknown kind '{other}'"))),
        };
        let mut rates = [None; 4];
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or((n, format!("'{word}' is not key=rate")))?;
            let slot = FIELDS
                .iter()
                .position(|f| *f == key)
                .ok_or((n, format!("unknown limit '{key}'")))?;
            let rate: u64 = value
                .parse()
                .ok()
                .filter(|r| *r > 0)
                .ok_or((n, format!("'{value}' is not a rate above 0")))?;
            rates[slot] = Some(rate);
        }
        let limits = Limits::from_array(rates);
        if limits.is_empty() {
            return Err((n, "no limit".into()));
        }
        all.push((entity, limits));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bytes(rate: u64) -> Limits {
        Limits {
            produce_bytes: Some(rate),
            ..Limits::default()
        }
    }

    #[test]
    fn given_no_quota_when_admitting_should_never_wait() {
        let q = Quotas::default();
        for _ in 0..1000 {
            assert_eq!(q.admit(Direction::Produce, "c", "t", 1 << 20), Ok(()));
        }
    }

    #[test]
    fn given_client_quota_when_burst_spent_should_throttle_for_the_debt() {
        let q = Quotas::default();
        q.set(Entity::Client("c".into()), bytes(1000)).unwrap();
        // The bucket holds 100 ms of rate: 100 bytes. One admission of 600 leaves a 500 debt.
        assert_eq!(q.admit(Direction::Produce, "c", "t", 600), Ok(()));
        let wait = q.admit(Direction::Produce, "c", "t", 1).unwrap_err();
        assert!((490..=500).contains(&wait), "{wait}");
        // Other clients and the other direction are not limited.
        assert_eq!(q.admit(Direction::Produce, "d", "t", 600), Ok(()));
        assert_eq!(q.admit(Direction::Fetch, "c", "t", 600), Ok(()));
    }

    #[test]
    fn given_topic_quota_when_two_clients_share_it_should_throttle_both() {
        let q = Quotas::default();
        q.set(
            Entity::Topic("t".into()),
            Limits {
                fetch_messages: Some(10),
                ..Limits::default()
            },
        )
        .unwrap();
        q.charge(Direction::Fetch, "a", "t", 0, 11);
        assert!(q.wait_ms(Direction::Fetch, "b", "t") > 0);
        assert_eq!(q.wait_ms(Direction::Fetch, "b", "u"), 0);
    }

    #[test]
    fn given_debt_when_time_passes_should_repay_it_at_the_rate() {
        let q = Quotas::default();
        q.set(Entity::Client("c".into()), bytes(100_000)).unwrap();
        q.charge(Direction::Produce, "c", "t", 10_000 + 2_000, 0);
        assert!(q.wait_ms(Direction::Produce, "c", "t") > 0);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(q.wait_ms(Direction::Produce, "c", "t"), 0);
    }

    #[test]
    fn given_rate_over_a_second_when_admitting_greedily_should_pass_about_the_rate() {
        let q = Quotas::default();
        q.set(Entity::Client("c".into()), bytes(50_000)).unwrap();
        let start = Instant::now();
        let mut passed = 0u64;
        while start.elapsed() < Duration::from_millis(500) {
            if q.admit(Direction::Produce, "c", "t", 1000).is_ok() {
                passed += 1000;
            }
        }
        // 5 000 of burst + 25 000 over 500 ms, plus at most one block of debt.
        assert!((29_000..=32_000).contains(&passed), "{passed}");
    }

    #[test]
    fn given_changes_when_set_merges_and_delete_removes() {
        let q = Quotas::default();
        let e = Entity::Topic("t".into());
        q.set(e.clone(), bytes(10)).unwrap();
        let now = q
            .set(
                e.clone(),
                Limits {
                    fetch_bytes: Some(20),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert_eq!(now.produce_bytes, Some(10));
        assert_eq!(now.fetch_bytes, Some(20));
        assert!(q.delete(&e).unwrap());
        assert!(!q.delete(&e).unwrap());
        assert!(q.list().is_empty());
        assert_eq!(q.wait_ms(Direction::Produce, "c", "t"), 0);
    }

    #[test]
    fn given_bad_changes_when_setting_should_refuse() {
        let q = Quotas::default();
        assert!(q.set(Entity::Client(String::new()), bytes(1)).is_err());
        assert!(q
            .set(Entity::Client("c".into()), Limits::default())
            .is_err());
        assert!(q.set(Entity::Client("c".into()), bytes(0)).is_err());
        assert!(q.set(Entity::Client("c".repeat(257)), bytes(1)).is_err());
        assert!(q.set(Entity::Topic("t".repeat(250)), bytes(1)).is_err());
        assert!(q.list().is_empty());
    }

    #[test]
    fn given_odd_names_when_encoded_should_decode_the_same() {
        let all = vec![
            (
                Entity::Client("web 1=%ü\n".into()),
                Limits {
                    produce_bytes: Some(1),
                    produce_messages: Some(2),
                    fetch_bytes: Some(3),
                    fetch_messages: Some(4),
                },
            ),
            (Entity::Topic("orders".into()), bytes(10_000_000)),
        ];
        assert_eq!(decode(&encode(&all)).unwrap(), all);
    }

    #[test]
    fn given_damaged_file_when_decoding_should_name_the_line() {
        for bad in [
            "client\n",
            "user x produce_bytes=1\n",
            "client x\n",
            "client x produce_bytes=0\n",
            "client x speed=1\n",
            "# ok\nclient %zz produce_bytes=1\n",
        ] {
            let (line, _) = decode(bad).unwrap_err();
            assert!(line >= 1, "{bad:?}");
        }
    }
}
