"""confluent-kafka (librdkafka) against Levee's Kafka listener: an idempotent zstd producer with
keys and headers over two partitions, a consumer that assigns both partitions itself and reads
everything back, and a commit with metadata read back through committed().

Usage: python confluent_assign.py BOOTSTRAP TOPIC  (TOPIC has 2 partitions and is empty)."""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
              "compression.type": "zstd"})
for i in range(100):
    p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 2,
              headers=[("h", b"x")])
assert p.flush(30) == 0, "not every record was acknowledged"

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "assign-and-commit",
              "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
got = []
while len(got) < 100:
    m = c.poll(10)
    assert m is not None, f"timed out after {len(got)} records"
    assert m.error() is None, m.error()
    got.append(m)
assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(100))
first = [m for m in got if m.partition() == 0][0]
assert (first.key(), first.value(), first.headers()) == (b"k0", b"v0", [("h", b"x")])

c.commit(offsets=[TopicPartition(topic, 0, 50, metadata="half"), TopicPartition(topic, 1, 20)],
         asynchronous=False)
committed = {t.partition: (t.offset, t.metadata)
             for t in c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)}
assert committed[0] == (50, "half"), committed
assert committed[1][0] == 20, committed
c.close()
print("confluent-kafka: 100 records round trip, commit with metadata read back")
