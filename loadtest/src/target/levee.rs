//! Levee through its Rust client: a `Producer` per producer connection and a `GroupConsumer` per
//! worker, as an application would use them (no pre-encoded runs), so the comparison with the
//! other targets' client libraries is fair.

use std::time::Duration;

use anyhow::Context;
use levee::client::{
    Client, ClientConfig, GroupConsumer, GroupConsumerConfig, Producer, ProducerConfig,
    ProducerRecord,
};
use levee::protocol::{Acks, TopicConfig};

use super::{Done, OrderProducer, OrderWorker, Target};
use crate::broker::{Broker, BrokerArgs};
use crate::common::{unique_topic, AcksArg};

/// A Levee broker and the run's `orders` topic.
pub struct LeveeTarget {
    broker: Option<Broker>,
    addr: String,
    topic: String,
    group: String,
    acks: Acks,
}

impl LeveeTarget {
    /// Starts a broker as `args` say (or reaches `--broker`).
    pub fn start(args: &BrokerArgs, acks: AcksArg) -> anyhow::Result<LeveeTarget> {
        let broker = Broker::start(args)?;
        let addr = broker.addr.clone();
        let topic = unique_topic("orders");
        Ok(LeveeTarget {
            group: format!("{topic}-workers"),
            broker: Some(broker),
            addr,
            topic,
            acks: acks.into(),
        })
    }

    fn client(&self, id: &str) -> anyhow::Result<Client> {
        Client::connect(
            &self.addr,
            ClientConfig {
                client_id: id.to_string(),
                ..ClientConfig::default()
            },
        )
        .with_context(|| format!("cannot connect to Levee at {}", self.addr))
    }
}

impl Target for LeveeTarget {
    fn prepare(&mut self, partitions: u32) -> anyhow::Result<()> {
        self.client("flash-sale-admin")?.create_topic(
            &self.topic,
            TopicConfig {
                partitions,
                ..TopicConfig::default()
            },
        )?;
        Ok(())
    }

    fn producer(&self) -> anyhow::Result<Box<dyn OrderProducer>> {
        let producer = self
            .client("flash-sale-producer")?
            .producer(ProducerConfig {
                acks: self.acks,
                // A sale's requests go out as they come: no waiting to fill a batch.
                linger_ms: 0,
                ..ProducerConfig::default()
            })?;
        Ok(Box::new(LeveeProducer {
            producer,
            topic: self.topic.clone(),
        }))
    }

    fn worker(&self, index: usize, batch: usize) -> anyhow::Result<Box<dyn OrderWorker>> {
        let consumer = self
            .client(&format!("flash-sale-worker-{index}"))?
            .group_consumer(GroupConsumerConfig {
                max_wait_ms: 100,
                // A worker holds at most one round's orders, and fetches little more.
                max_uncommitted: batch as u64,
                fetch_max_bytes: 64 << 10,
                ..GroupConsumerConfig::new(&self.group, [self.topic.as_str()])
            })?;
        Ok(Box::new(LeveeWorker { consumer }))
    }

    fn server_pid(&self) -> Option<u32> {
        self.broker.as_ref().and_then(Broker::pid)
    }

    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        let broker = self.broker.take().context("stopped twice")?;
        if !broker.is_owned() {
            let client = self.client("flash-sale-admin")?;
            let _ = client.delete_group(&self.group);
            client.delete_topic(&self.topic)?;
        }
        broker.stop()
    }
}

struct LeveeProducer {
    producer: Producer,
    topic: String,
}

impl OrderProducer for LeveeProducer {
    fn send(&mut self, key: u64, value: &[u8], done: Done) {
        self.producer
            .send(
                ProducerRecord::new(self.topic.as_str(), value.to_vec())
                    .with_key(key.to_le_bytes().to_vec()),
            )
            .on_complete(move |r| done(r.map(drop).map_err(Into::into)));
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        self.producer.close();
        Ok(())
    }
}

struct LeveeWorker {
    consumer: GroupConsumer,
}

impl OrderWorker for LeveeWorker {
    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        // The group consumer hands out whole fetches; `max` is what the caller takes per round,
        // and commits cover only what it took: the rest is sought back.
        let records = self.consumer.poll(wait)?;
        let mut out = Vec::with_capacity(records.len().min(max));
        let mut rewind: Vec<(String, u32, u64)> = Vec::new();
        for r in records {
            if out.len() < max {
                out.push(r.value);
            } else if !rewind
                .iter()
                .any(|(t, p, _)| *t == r.topic && *p == r.partition)
            {
                rewind.push((r.topic, r.partition, r.offset));
            }
        }
        for (topic, partition, offset) in rewind {
            self.consumer.seek(&topic, partition, offset)?;
        }
        Ok(out)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        Ok(self.consumer.commit()?)
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(self.consumer.close()?)
    }
}
