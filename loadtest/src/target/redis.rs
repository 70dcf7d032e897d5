//! Redis Streams: one stream, orders added with XADD, one consumer group read with XREADGROUP and
//! acknowledged with XACK, through the `redis` crate's synchronous connections (one per producer
//! and per worker, as a threaded application would have).
//!
//! `--acks` maps onto the AOF: `durable` starts the server with `appendfsync always` (Redis fsyncs
//! the AOF before it answers a write), `written` and `none` with `appendfsync no` (the write is in
//! the OS page cache when Redis answers: it survives a crash of Redis, not of the machine). Redis
//! always answers, so `none` waits for the answer too.

use std::time::Duration;

use anyhow::Context;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::Commands;

use super::{ChildServer, Done, OrderProducer, OrderWorker, Target, TargetArgs};
use crate::common::{unique_topic, AcksArg};

/// A Redis server and the run's stream.
pub struct RedisTarget {
    server: Option<ChildServer>,
    url: String,
    key: String,
    group: String,
}

impl RedisTarget {
    /// Starts `redis-server` on 127.0.0.1 in a temporary dir (or reaches `--broker`).
    pub fn start(args: &TargetArgs, acks: AcksArg) -> anyhow::Result<RedisTarget> {
        let key = unique_topic("orders");
        let group = format!("{key}-workers");
        if let Some(addr) = &args.broker.broker {
            return Ok(RedisTarget {
                server: None,
                url: format!("redis://{addr}/"),
                key,
                group,
            });
        }
        let fsync = match acks {
            AcksArg::Durable => "always",
            AcksArg::Written | AcksArg::None => "no",
        };
        let (server, addr) = ChildServer::start(
            &args.redis_bin,
            args.broker.data_dir.as_deref(),
            |dir, port| {
                let mut a: Vec<std::ffi::OsString> = ["--bind", "127.0.0.1", "--port"]
                    .iter()
                    .map(Into::into)
                    .collect();
                a.push(port.to_string().into());
                a.push("--dir".into());
                a.push(dir.into());
                for x in [
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    fsync,
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ] {
                    a.push(x.into());
                }
                a
            },
        )?;
        eprintln!("started {} on {addr} (appendfsync {fsync})", args.redis_bin);
        Ok(RedisTarget {
            server: Some(server),
            url: format!("redis://{addr}/"),
            key,
            group,
        })
    }

    fn connection(&self) -> anyhow::Result<redis::Connection> {
        redis::Client::open(self.url.as_str())?
            .get_connection()
            .with_context(|| format!("cannot connect to Redis at {}", self.url))
    }
}

impl Target for RedisTarget {
    fn prepare(&mut self, _partitions: u32) -> anyhow::Result<()> {
        // A stream has no partitions: the group spreads its entries over the consumers.
        let mut con = self.connection()?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg("$")
            .arg("MKSTREAM")
            .query::<()>(&mut con)
            .context("XGROUP CREATE")?;
        Ok(())
    }

    fn producer(&self) -> anyhow::Result<Box<dyn OrderProducer>> {
        Ok(Box::new(RedisProducer {
            con: self.connection()?,
            key: self.key.clone(),
        }))
    }

    fn worker(&self, index: usize, _batch: usize) -> anyhow::Result<Box<dyn OrderWorker>> {
        Ok(Box::new(RedisWorker {
            con: self.connection()?,
            key: self.key.clone(),
            group: self.group.clone(),
            consumer: format!("worker-{index}"),
            unacked: Vec::new(),
        }))
    }

    fn send_blocks(&self) -> bool {
        // The `redis` crate's synchronous connection: XADD returns with its answer.
        true
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(ChildServer::pid)
    }

    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        match self.server.take() {
            Some(server) => server.stop(),
            None => {
                let mut con = self.connection()?;
                con.del::<_, ()>(&self.key)?;
                Ok(())
            }
        }
    }
}

struct RedisProducer {
    con: redis::Connection,
    key: String,
}

impl OrderProducer for RedisProducer {
    fn send(&mut self, key: u64, value: &[u8], done: Done) {
        // Synchronous: the answer is in when XADD returns.
        let added = redis::cmd("XADD")
            .arg(&self.key)
            .arg("*")
            .arg("user")
            .arg(key)
            .arg("order")
            .arg(value)
            .query::<String>(&mut self.con)
            .context("XADD");
        done(added.map(drop));
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}

struct RedisWorker {
    con: redis::Connection,
    key: String,
    group: String,
    consumer: String,
    /// Entry ids returned by `poll` and not acknowledged yet.
    unacked: Vec<String>,
}

impl OrderWorker for RedisWorker {
    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(max)
            .block(wait.as_millis().max(1) as usize);
        let reply: Option<StreamReadReply> = self
            .con
            .xread_options(&[&self.key], &[">"], &options)
            .context("XREADGROUP")?;
        let mut out = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                let value: Vec<u8> = entry
                    .get("order")
                    .with_context(|| format!("entry {} has no order field", entry.id))?;
                out.push(value);
                self.unacked.push(entry.id);
            }
        }
        Ok(out)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        if self.unacked.is_empty() {
            return Ok(());
        }
        self.con
            .xack::<_, _, _, ()>(&self.key, &self.group, &self.unacked)
            .context("XACK")?;
        self.unacked.clear();
        Ok(())
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}
