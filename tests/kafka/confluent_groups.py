"""confluent-kafka (librdkafka) consumer groups against Levee's Kafka listener, with one
assignor (range or roundrobin) and an idempotent producer.

Usage: python confluent_groups.py BOOTSTRAP TOPIC ASSIGNOR PHASE
  TOPIC has 4 partitions and is empty before phase `run`.
  run:     two consumers get disjoint, complete assignments (the assignor's pattern); one
           leaves and the other takes over its partitions from their committed offsets; a
           consumer started afresh resumes from the committed offsets.
  resume:  after a broker restart, a new consumer resumes from the offsets committed in `run`.
Every wait is bounded; a failure raises."""
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer

bootstrap, topic, assignor, phase = sys.argv[1:5]
group = f"g-{topic}-{assignor}"
PARTITIONS = 4
EXPECTED = {  # member order is by member id; either consumer may hold either half
    "range": {frozenset({0, 1}), frozenset({2, 3})},
    "roundrobin": {frozenset({0, 2}), frozenset({1, 3})},
}[assignor]


def produce(per_partition, start):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for part in range(PARTITIONS):
        for i in range(start, start + per_partition):
            p.produce(topic, key=f"k{part}-{i}".encode(), value=f"v{part}-{i}".encode(),
                      partition=part)
    assert p.flush(30) == 0, "not every record was acknowledged"


class Member:
    def __init__(self, name):
        self.name = name
        self.assigned = set()
        self.seen = {}  # partition -> offsets read
        self.c = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group,
            "partition.assignment.strategy": assignor,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "client.id": name,
        })
        self.c.subscribe([topic], on_assign=self.on_assign, on_revoke=self.on_revoke)

    def on_assign(self, _c, parts):
        self.assigned = {p.partition for p in parts}

    def on_revoke(self, _c, _parts):
        self.assigned = set()

    def poll(self):
        m = self.c.poll(0.1)
        if m is None:
            return
        if m.error():
            raise KafkaException(m.error())
        assert m.value() == f"v{m.partition()}-{m.offset()}".encode(), (m.value(), m.offset())
        self.seen.setdefault(m.partition(), []).append(m.offset())

    def commit(self):
        self.c.commit(asynchronous=False)

    def close(self):
        self.c.close()


def until(what, cond, members, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for m in members:
            m.poll()


def read(members, offsets):
    """Polls until every partition's offsets in `offsets` were read, once, by some member."""
    want = {p: list(offsets) for p in range(PARTITIONS)}

    def done():
        got = {}
        for m in members:
            for p, offs in m.seen.items():
                got.setdefault(p, []).extend(offs)
        return all(sorted(got.get(p, [])) == want[p] for p in want)

    until(f"offsets {offsets.start}..{offsets.stop} of every partition", done, members)
    time.sleep(0.5)  # a duplicate arriving late would show below
    for m in members:
        m.poll()
    assert done(), "a record was delivered twice"
    for m in members:
        m.seen.clear()


def fresh_consumer_resumes(name, start, count):
    produce(count, start)
    c = Member(name)
    until("the sole consumer's assignment", lambda: len(c.assigned) == PARTITIONS, [c])
    read([c], range(start, start + count))
    c.commit()
    c.close()


if phase == "run":
    produce(50, 0)
    a, b = Member("a"), Member("b")
    until("two disjoint, complete assignments",
          lambda: a.assigned and b.assigned and not a.assigned & b.assigned
          and len(a.assigned | b.assigned) == PARTITIONS, [a, b])
    got = {frozenset(a.assigned), frozenset(b.assigned)}
    assert got == EXPECTED, f"{assignor} assigned {got}, expected {EXPECTED}"
    read([a, b], range(0, 50))
    a.commit()
    b.commit()
    b.close()
    until("the remaining consumer to take over", lambda: len(a.assigned) == PARTITIONS, [a])
    produce(50, 50)
    # b's partitions resume from b's commits: nothing it read comes again.
    read([a], range(50, 100))
    a.commit()
    a.close()
    fresh_consumer_resumes("c", 100, 25)
    print(f"confluent-kafka {assignor}: disjoint complete assignment {sorted(map(sorted, got))}, "
          "leave and takeover, commits resumed after a consumer restart")
elif phase == "resume":
    fresh_consumer_resumes("d", 125, 25)
    print(f"confluent-kafka {assignor}: commits resumed after a broker restart")
else:
    raise SystemExit(f"unknown phase {phase}")
