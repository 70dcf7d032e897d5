"""kafka-python 3 with its defaults (idempotence on, range and roundrobin assignors) against
Levee's Kafka listener: produce, read back with an assigned partition, then as a group member
that commits, and again after a restart of the consumer, from the committed offset.

Usage: python kafka_python_defaults.py BOOTSTRAP TOPIC  (TOPIC has 1 partition and is empty)."""
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
p = KafkaProducer(bootstrap_servers=bootstrap)
futures = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
           for i in range(50)]
p.flush(30)
offsets = [f.get(timeout=10).offset for f in futures]
assert offsets == list(range(50)), offsets
p.close()

c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
tp = TopicPartition(topic, 0)
c.assign([tp])
c.seek_to_beginning(tp)
got = [(m.key, m.value) for m in c]
assert got == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(50)], got[:3]
c.close()


def group_read(expected):
    g = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="kp-group",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=8000)
    got = [m.value for m in g]
    assert got == expected, (got[:3], len(got))
    assert g.assignment() == {tp}, g.assignment()
    g.commit()
    g.close()


group_read([f"v{i}".encode() for i in range(50)])
p = KafkaProducer(bootstrap_servers=bootstrap)
for i in range(50, 60):
    p.send(topic, value=f"v{i}".encode(), partition=0)
p.flush(30)
p.close()
group_read([f"v{i}".encode() for i in range(50, 60)])
print("kafka-python: 50 records with default (idempotent) producer settings round trip; "
      "a group member reads, commits, and its successor resumes from the commit")
