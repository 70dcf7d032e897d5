//! NATS JetStream: a file-backed work-queue stream, one durable pull consumer shared by the
//! workers, acknowledged message by message, through the `async-nats` crate on a tokio runtime
//! this driver owns (each producer and worker has its own connection).
//!
//! `--acks`: `durable` and `written` wait for JetStream's publish acknowledgement, which the
//! server sends once the message is stored in the stream's file; `nats-server` fsyncs its files in
//! the background (every 2 minutes by default), so neither survives a power cut the way Levee's
//! `durable` does. `none` publishes without asking for an acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;

use super::{ChildServer, Done, OrderProducer, OrderWorker, Target, TargetArgs};
use crate::common::{unique_topic, AcksArg};

/// The durable consumer the workers share.
const CONSUMER: &str = "workers";

/// A NATS server and the run's stream.
pub struct NatsTarget {
    server: Option<ChildServer>,
    rt: Arc<tokio::runtime::Runtime>,
    url: String,
    stream: String,
    acks: AcksArg,
}

impl NatsTarget {
    /// Starts `nats-server -js` on 127.0.0.1 in a temporary dir (or reaches `--broker`).
    pub fn start(args: &TargetArgs, acks: AcksArg) -> anyhow::Result<NatsTarget> {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start a tokio runtime")?,
        );
        let stream = unique_topic("orders");
        if let Some(addr) = &args.broker.broker {
            return Ok(NatsTarget {
                server: None,
                rt,
                url: format!("nats://{addr}"),
                stream,
                acks,
            });
        }
        let (server, addr) = ChildServer::start(
            &args.nats_bin,
            args.broker.data_dir.as_deref(),
            |dir, port| {
                let mut a: Vec<std::ffi::OsString> = vec!["-a".into(), "127.0.0.1".into()];
                a.extend(["-p".into(), port.to_string().into(), "-js".into()]);
                a.extend(["-sd".into(), dir.into()]);
                a.extend(["-l".into(), dir.join("nats-server.log").into()]);
                a
            },
        )?;
        eprintln!("started {} on {addr} (JetStream)", args.nats_bin);
        Ok(NatsTarget {
            server: Some(server),
            rt,
            url: format!("nats://{addr}"),
            stream,
            acks,
        })
    }

    fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.rt
            .block_on(async_nats::connect(&self.url))
            .with_context(|| format!("cannot connect to NATS at {}", self.url))
    }

    /// A JetStream context on `client` (it spawns on the runtime, so it is made inside it).
    fn jetstream(&self, client: async_nats::Client) -> jetstream::Context {
        let _inside = self.rt.enter();
        jetstream::new(client)
    }

    fn consumer(&self, js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
        self.rt.block_on(async {
            let stream = js.get_stream(&self.stream).await?;
            let consumer: PullConsumer = stream
                .get_consumer(CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("getting the consumer: {e}"))?;
            Ok::<_, anyhow::Error>(consumer)
        })
    }
}

impl Target for NatsTarget {
    fn prepare(&mut self, _partitions: u32) -> anyhow::Result<()> {
        // A work-queue stream has no partitions: the pull consumer hands each message to one
        // worker.
        let js = self.jetstream(self.connect()?);
        self.rt.block_on(async {
            let stream = js
                .create_stream(jetstream::stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![self.stream.clone()],
                    retention: jetstream::stream::RetentionPolicy::WorkQueue,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("creating the stream")?;
            stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // Orders are processed for up to a worker's batch x process time before
                    // their ack: no redelivery meanwhile.
                    ack_wait: Duration::from_secs(600),
                    max_ack_pending: -1,
                    ..Default::default()
                })
                .await
                .context("creating the consumer")?;
            Ok::<_, anyhow::Error>(())
        })
    }

    fn producer(&self) -> anyhow::Result<Box<dyn OrderProducer>> {
        let client = self.connect()?;
        Ok(Box::new(NatsProducer {
            rt: self.rt.clone(),
            js: self.jetstream(client.clone()),
            client,
            subject: self.stream.clone(),
            acks: self.acks,
        }))
    }

    fn worker(&self, _index: usize, _batch: usize) -> anyhow::Result<Box<dyn OrderWorker>> {
        let client = self.connect()?;
        let js = self.jetstream(client.clone());
        Ok(Box::new(NatsWorker {
            rt: self.rt.clone(),
            consumer: self.consumer(&js)?,
            client,
            unacked: Vec::new(),
        }))
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(ChildServer::pid)
    }

    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        match self.server.take() {
            Some(server) => server.stop(),
            None => {
                let js = self.jetstream(self.connect()?);
                self.rt.block_on(js.delete_stream(&self.stream))?;
                Ok(())
            }
        }
    }
}

struct NatsProducer {
    rt: Arc<tokio::runtime::Runtime>,
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    acks: AcksArg,
}

impl OrderProducer for NatsProducer {
    fn send(&mut self, _key: u64, value: &[u8], done: Done) {
        let payload = bytes::Bytes::copy_from_slice(value);
        if self.acks == AcksArg::None {
            let sent = self
                .rt
                .block_on(self.client.publish(self.subject.clone(), payload));
            done(sent.map_err(|e| anyhow::anyhow!("publish: {e}")));
            return;
        }
        // The publish is on its way when this returns; a task on the runtime awaits its
        // acknowledgement.
        match self
            .rt
            .block_on(self.js.publish(self.subject.clone(), payload))
        {
            Ok(ack) => {
                self.rt.spawn(async move {
                    done(
                        ack.await
                            .map(drop)
                            .map_err(|e| anyhow::anyhow!("publish ack: {e}")),
                    );
                });
            }
            Err(e) => done(Err(anyhow::anyhow!("publish: {e}"))),
        }
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        self.rt.block_on(self.client.flush())?;
        Ok(())
    }
}

struct NatsWorker {
    rt: Arc<tokio::runtime::Runtime>,
    client: async_nats::Client,
    consumer: PullConsumer,
    /// Messages returned by `poll` and not acknowledged yet.
    unacked: Vec<jetstream::Message>,
}

impl OrderWorker for NatsWorker {
    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let (consumer, unacked) = (&self.consumer, &mut self.unacked);
        self.rt.block_on(async {
            let mut batch = consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await?;
            let mut out = Vec::new();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
                out.push(m.payload.to_vec());
                unacked.push(m);
            }
            Ok(out)
        })
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        let (client, unacked) = (&self.client, &mut self.unacked);
        self.rt.block_on(async {
            for m in unacked.drain(..) {
                m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
            client.flush().await?;
            Ok(())
        })
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}
