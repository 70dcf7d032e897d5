//! What both scenarios share: the acks argument, the test topic, per-partition connections, the
//! payload records, and produce/fetch response checks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use levee::client::{Client, ClientConfig, Connection, ResponseFrame};
use levee::protocol::{Acks, ErrorCode, FetchRequest, Request, Response, TopicConfig};
use levee::record::{self, Message};
use serde::Serialize;

/// How long the broker may wait to make a `durable` batch durable before it answers `Timeout`.
pub const PRODUCE_TIMEOUT_MS: u32 = 30_000;

/// `--acks`: what a produce waits for (CONTRACT.md, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksArg {
    /// Fire and forget: no response.
    None,
    /// The records are in the mapped segment.
    Written,
    /// A flush covering the records completed.
    Durable,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Written => Acks::Written,
            AcksArg::Durable => Acks::Durable,
        }
    }
}

/// A fresh topic name: one run never sees another run's records.
pub fn unique_topic(scenario: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("loadtest-{scenario}-{}-{ms}", std::process::id())
}

/// Read visibility of the test topic: `written` or `durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VisibilityArg {
    /// Consumers read every appended record.
    Written,
    /// Consumers read only records a flush made durable.
    Durable,
}

/// Connects and creates `topic` with `partitions` partitions, keeping at most `retention_bytes`
/// per partition (`None`: no limit), with `visibility` (`None`: the broker's default).
pub fn setup_topic(
    addr: &str,
    topic: &str,
    partitions: u32,
    retention_bytes: Option<u64>,
    visibility: Option<VisibilityArg>,
) -> anyhow::Result<Client> {
    let client = Client::connect(addr, ClientConfig::default())
        .with_context(|| format!("cannot connect to the broker at {addr}"))?;
    client
        .create_topic(
            topic,
            TopicConfig {
                partitions,
                retention_bytes,
                retention_ms: None,
                visibility: visibility.map(|v| match v {
                    VisibilityArg::Written => levee::protocol::Visibility::Written,
                    VisibilityArg::Durable => levee::protocol::Visibility::Durable,
                }),
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot create topic {topic}"))?;
    Ok(client)
}

/// The `host:port` of the shard owning each partition of `topic`, as the client would route it.
pub fn partition_addrs(
    client: &Client,
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<HashMap<u32, String>> {
    let meta = client.metadata(&[topic])?;
    let bootstrap_host = bootstrap
        .rsplit_once(':')
        .map_or(bootstrap, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let shards: HashMap<u16, String> = meta
        .shards
        .iter()
        .map(|s| {
            let host = s.host.trim_matches(|c| c == '[' || c == ']');
            let unspecified =
                host.is_empty() || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
            let host = if unspecified { &bootstrap_host } else { host };
            let addr = if host.contains(':') {
                format!("[{host}]:{}", s.port)
            } else {
                format!("{host}:{}", s.port)
            };
            (s.shard, addr)
        })
        .collect();
    let t = meta
        .topics
        .iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("topic {topic} missing from metadata"))?;
    if t.error != ErrorCode::None {
        bail!("metadata for {topic}: {:?}", t.error);
    }
    t.partitions
        .iter()
        .map(|&(p, shard)| {
            let addr = shards
                .get(&shard)
                .with_context(|| format!("shard {shard} of partition {p} not advertised"))?;
            Ok((p, addr.clone()))
        })
        .collect()
}

/// One connection per distinct shard address among `partitions`, shared by the partitions the
/// shard owns: what a client does, so the broker never hops between cores.
pub fn connections_for(
    addrs: &HashMap<u32, String>,
    partitions: &[u32],
) -> anyhow::Result<HashMap<u32, Arc<Connection>>> {
    let config = ClientConfig::default();
    let mut by_addr: HashMap<&str, Arc<Connection>> = HashMap::new();
    let mut out = HashMap::new();
    for p in partitions {
        let addr = addrs
            .get(p)
            .with_context(|| format!("no address for partition {p}"))?;
        let conn = match by_addr.get(addr.as_str()) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(
                    Connection::connect(addr, &config)
                        .with_context(|| format!("cannot connect to shard {addr}"))?,
                );
                by_addr.insert(addr, c.clone());
                c
            }
        };
        out.insert(*p, conn);
    }
    Ok(out)
}

/// One encoded record with a value of `value_bytes` bytes (first bytes from `prefix`, the rest a
/// fixed pattern), appended to `out`. Returns the record's length.
pub fn encode_record(
    out: &mut Vec<u8>,
    value_bytes: usize,
    prefix: &[u8],
) -> anyhow::Result<usize> {
    let mut value = vec![0u8; value_bytes];
    for (i, b) in value.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let n = prefix.len().min(value_bytes);
    value[..n].copy_from_slice(&prefix[..n]);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let message = Message {
        timestamp_ms: ms,
        value,
        ..Message::default()
    };
    Ok(record::encode(&message, out)?)
}

/// Checks a one-block Produce response and returns the batch's base offset.
pub fn produce_result(frame: &ResponseFrame, partition: u32) -> anyhow::Result<u64> {
    match frame.decode()? {
        Response::Produce(results) => {
            let r = results
                .iter()
                .find(|r| r.partition == partition)
                .context("produce response without our partition")?;
            if r.error != ErrorCode::None {
                bail!("produce to partition {partition} failed: {:?}", r.error);
            }
            Ok(r.base_offset)
        }
        other => bail!("unexpected response to produce: {other:?}"),
    }
}

/// A one-partition Fetch request.
pub fn fetch_request(
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: u32,
    max_wait_ms: u32,
) -> Request {
    Request::Fetch(FetchRequest::one(
        topic,
        partition,
        offset,
        max_bytes,
        max_wait_ms,
    ))
}

/// The record run of a one-partition Fetch response, as a byte range of the frame, with the
/// partition's log end when the broker answered.
pub fn fetch_result(
    frame: &ResponseFrame,
    partition: u32,
) -> anyhow::Result<(std::ops::Range<usize>, u64)> {
    match frame.decode()? {
        Response::Fetch(results) => {
            let r = results
                .into_iter()
                .find(|r| r.partition == partition)
                .context("fetch response without our partition")?;
            if r.error != ErrorCode::None {
                bail!(
                    "fetch of partition {partition} failed: {:?} (log {}..{})",
                    r.error,
                    r.earliest,
                    r.next
                );
            }
            if r.run.start % record::RECORD_ALIGN != 0 || r.run.end > frame.bytes().len() {
                bail!("fetch response run {:?} is misplaced", r.run);
            }
            Ok((r.run, r.next))
        }
        other => bail!("unexpected response to fetch: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_value_size_when_encoded_should_give_aligned_record_with_prefix() {
        let mut buf = Vec::new();
        let len = encode_record(&mut buf, 1024, b"abc").unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(len % record::RECORD_ALIGN, 0);
        let mut space = vec![0u8; len + record::RECORD_ALIGN];
        let at = space.as_ptr().align_offset(record::RECORD_ALIGN);
        space[at..at + len].copy_from_slice(&buf);
        let r = record::decode(&space[at..at + len], 0, 1 << 20, record::Check::Full).unwrap();
        let m = r.message().unwrap();
        assert_eq!(m.value.len(), 1024);
        assert_eq!(&m.value[..3], b"abc");
    }

    #[test]
    fn given_scenario_when_naming_topic_should_be_a_valid_topic_name() {
        let t = unique_topic("throughput");
        assert!(levee::protocol::valid_topic_name(&t), "{t}");
    }
}
