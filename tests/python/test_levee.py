"""Tests of the Python client (tests/python/levee_client.py), which is written from docs/protocol.md.

Codec tests always run: the golden record, archive layouts, and the worked examples of the doc.
Broker tests run only when LEVEE_BROKER is set (e.g. LEVEE_BROKER=127.0.0.1:7070).

    python3 -m unittest discover -s tests/python -v
    LEVEE_BROKER=127.0.0.1:7070 python3 -m unittest discover -s tests/python -v
"""

import os
import pathlib
import struct
import sys
import time
import unittest
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import levee_client as lc  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = REPO / "src" / "record" / "golden_record.hex"

GOLDEN_MESSAGE = lc.Message(
    timestamp_ms=1_700_000_000_123,
    producer_id=7,
    sequence=42,
    key=b"user-1",
    value=b"registered",
    headers=[("trace", b"abc")],
)


def unhex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


class GoldenTest(unittest.TestCase):
    def test_golden(self):
        golden = unhex(GOLDEN.read_text())
        self.assertEqual(len(golden), 128)
        (rec,) = lc.decode_run(golden)
        self.assertEqual(rec.offset, 5)
        self.assertEqual(rec.timestamp_ms, 1_700_000_000_999)
        self.assertEqual(rec.archive_crc, 0x58EA9093)
        self.assertEqual(rec.header_crc, 0x0F8252FC)
        self.assertEqual(rec.message, GOLDEN_MESSAGE)
        # The encoder is byte-identical to Rust's.
        built = lc.stamp_record(lc.encode_record(GOLDEN_MESSAGE), 5, 1_700_000_000_999)
        self.assertEqual(built.hex(), golden.hex())

    def test_golden_corruption_is_detected(self):
        golden = bytearray(unhex(GOLDEN.read_text()))
        for at in (0, 4, 8, 28, 40, 100, 127):
            bad = bytearray(golden)
            bad[at] ^= 0x01
            with self.assertRaises(lc.DecodeError, msg=f"flip at {at}"):
                lc.decode_run(bytes(bad))


class ArchiveTest(unittest.TestCase):
    # Archives printed by rkyv 0.8.18 for these messages (docs/protocol.md §8.3, §8.5).
    HELLO = unhex("""
        68656c6c6f000000 0068e5cf8b010000 0000000000000000 0000000000000000
        000000000000000000000000 d4ffffff05000000 d4ffffff00000000 00000000""")
    OUT_OF_LINE_KEY = unhex("""
        56616161616161616161 78797a 000000 89000000f1ffffff f2ffffff03000000
        0000000000000000 0000000000000000 0000000000000000 000000000000000000000000
        bcffffff01000000 c4ffffff01000000 00000000""")

    def test_simple_archive_matches_rust(self):
        m = lc.Message(value=b"hello", timestamp_ms=1_700_000_000_000)
        self.assertEqual(lc.encode_archive(m).hex(), self.HELLO.hex())
        self.assertEqual(lc.decode_archive(self.HELLO), m)

    def test_out_of_line_header_key_matches_rust(self):
        m = lc.Message(value=b"V", headers=[("aaaaaaaaa", b"xyz")])
        self.assertEqual(lc.encode_archive(m).hex(), self.OUT_OF_LINE_KEY.hex())
        self.assertEqual(lc.decode_archive(self.OUT_OF_LINE_KEY), m)

    def test_roundtrip_shapes(self):
        shapes = [
            lc.Message(),
            lc.Message(key=b"", value=b""),
            lc.Message(key=b"k" * 300, value=bytes(range(256)) * 5, timestamp_ms=-1, producer_id=2**64 - 1,
                       sequence=3),
            lc.Message(value=b"v", headers=[("", b""), ("12345678", b"x"), ("123456789", b""), ("é" * 40, b"y" * 70)]),
            lc.Message(value=b"v", headers=[("k" * 100, b"z")]),  # encoded length spans two bytes
        ]
        for m in shapes:
            a = lc.encode_archive(m)
            self.assertEqual(len(a) % 8, 0)
            self.assertEqual(lc.decode_archive(a), m)
            (rec,) = lc.decode_run(lc.stamp_record(lc.encode_record(m), 9, 1234))
            self.assertEqual((rec.offset, rec.timestamp_ms, rec.message), (9, 1234, m))

    def test_string_length_encoding(self):
        self.assertEqual(lc._encode_str_len(9), 0x89)
        self.assertEqual(lc._encode_str_len(100), 0x1A4)
        for n in (9, 63, 64, 100, 4095, 70000, (1 << 30) - 1):
            self.assertEqual(lc._decode_str_len(lc._encode_str_len(n)), n)


class FrameTest(unittest.TestCase):
    # docs/protocol.md §6.8 and §6.9, printed by the Rust codec.
    PRODUCE = unhex("""
        8c000000070000000200000000000000 02881300000100000006006f72646572
        73000000006000000000000000000000 90a15a13400000000000000000000000
        00000000000000000100000000000000 68656c6c6f0000000068e5cf8b010000
        00000000000000000000000000000000 000000000000000000000000d4ffffff
        05000000d4ffffff0000000000000000""")

    def test_api_versions_request(self):
        self.assertEqual(lc.build_api_versions(1, "py").hex(), "10000000000000000100000000000000" + "02007079")

    def test_produce_request_matches_doc(self):
        # The Rust client writes version 1 and a header CRC for offset 0; the Python one leaves the
        # header CRC zero, which the broker accepts (it overwrites bytes 8..32).
        frame = lc.build_produce(2, lc.Acks.DURABLE, 5000, [("orders", 0, lc.encode_record(
            lc.Message(value=b"hello", timestamp_ms=1_700_000_000_000)))])
        expected = bytearray(self.PRODUCE)
        expected[48 + 28:48 + 32] = bytes(4)
        self.assertEqual(frame.hex(), expected.hex())

    def test_run_padding_counts_from_frame_start(self):
        for name_len in range(0, 20):
            frame = lc.build_produce(1, 1, 0, [("t" * name_len, 0, lc.encode_record(lc.Message(value=b"x")))])
            # Run length field ends at 16 + 1 + 4 + 4 + 2 + name + 4 + 4.
            end_of_len = 16 + 9 + 2 + name_len + 8
            run_start = end_of_len + (-end_of_len) % 16
            self.assertEqual(run_start % 16, 0)
            self.assertEqual(frame[end_of_len:run_start], bytes(run_start - end_of_len))
            self.assertEqual(len(frame), run_start + 32 + 64)

    def test_fetch_response_decodes(self):
        run = lc.stamp_record(lc.encode_record(lc.Message(value=b"hello", timestamp_ms=1_700_000_000_000)),
                              0, 1_700_000_000_100)
        w = lc._Body(lc.Api.FETCH, 3)
        w.buf[6:8] = b"\x00\x00"
        w.count(1).string("orders").u32(0).u16(0).u64(0).u64(1).run(run)
        frame = w.frame()
        self.assertEqual(frame[:4], b"\x9c\x00\x00\x00")
        (res,) = lc.parse_fetch(frame)
        self.assertEqual((res.topic, res.partition, res.error, res.earliest, res.next), ("orders", 0, 0, 0, 1))
        (rec,) = res.records()
        self.assertEqual((rec.offset, rec.timestamp_ms, rec.message.value), (0, 1_700_000_000_100, b"hello"))

    def test_error_response(self):
        frame = unhex("1f000000 0800 0800 04000000 00000000 1100") + b"unknown topic 'x'"
        with self.assertRaises(lc.LeveeError) as cm:
            lc.parse_fetch(frame)
        self.assertEqual(cm.exception.code, lc.Err.UNKNOWN_TOPIC)
        self.assertEqual(cm.exception.message, "unknown topic 'x'")

    def test_trailing_bytes_rejected(self):
        # A ListTopics response (error 0) with an empty list and one byte too many.
        frame = lc.request_frame(lc.Api.LIST_TOPICS, 1, struct.pack("<I", 0) + b"\x00")
        with self.assertRaises(lc.DecodeError):
            lc.parse_list_topics(frame)


BROKER = os.environ.get("LEVEE_BROKER")


@unittest.skipUnless(BROKER, "set LEVEE_BROKER=host:port to run the broker tests")
class BrokerTest(unittest.TestCase):
    def setUp(self):
        self.client = lc.LeveeClient(BROKER or lc.DEFAULT_BROKER)
        self.topic = f"py-{uuid.uuid4().hex[:16]}"
        self.client.create_topic(self.topic, partitions=2)

    def tearDown(self):
        try:
            self.client.delete_topic(self.topic)
        finally:
            self.client.close()

    def test_handshake(self):
        self.assertEqual(sorted(self.client.apis), list(range(26)))
        self.assertTrue(self.client.broker.startswith("levee"))

    def test_produce_fetch_roundtrip(self):
        batch1 = [lc.Message(key=f"k{i}".encode(), value=f"value-{i}".encode(), timestamp_ms=1000 + i)
                  for i in range(3)]
        batch2 = [lc.Message(key=None, value=b"x" * 5000),
                  lc.Message(key=b"", value=b"", headers=[("trace", b"abc"), ("a-longer-key", b"\x00\xff")])]
        before = int(time.time() * 1000)
        r1 = self.client.produce(self.topic, 0, batch1, acks=lc.Acks.WRITTEN)
        r2 = self.client.produce(self.topic, 0, batch2, acks=lc.Acks.DURABLE)
        self.assertEqual((r1.topic, r1.partition, r1.error, r1.base_offset), (self.topic, 0, 0, 0))
        self.assertEqual(r2.base_offset, 3)
        self.assertGreaterEqual(r1.timestamp_ms, before - 1000)
        self.assertGreaterEqual(r2.timestamp_ms, r1.timestamp_ms)

        records = self.client.fetch_all(self.topic, 0, 0, 5)
        self.assertEqual([r.offset for r in records], [0, 1, 2, 3, 4])
        self.assertEqual([r.message for r in records], batch1 + batch2)
        self.assertEqual([r.timestamp_ms for r in records], [r1.timestamp_ms] * 3 + [r2.timestamp_ms] * 2)

        # From the middle; at the end: empty, no error; past the end: OffsetOutOfRange.
        self.assertEqual(self.client.fetch(self.topic, 0, 2)[0].message, batch1[2])
        self.assertEqual(self.client.fetch(self.topic, 0, 5), [])
        (res,) = self.client.fetch_blocks([(self.topic, 0, 6, 1 << 20)])
        self.assertEqual((res.error, res.earliest, res.next, res.run), (lc.Err.OFFSET_OUT_OF_RANGE, 0, 5, b""))

        self.assertEqual(self.client.list_offset(self.topic, 0, lc.OffsetKind.EARLIEST), 0)
        self.assertEqual(self.client.list_offset(self.topic, 0, lc.OffsetKind.LATEST), 5)
        self.assertEqual(self.client.list_offset(self.topic, 0, lc.OffsetKind.TIMESTAMP, r2.timestamp_ms), 3
                         if r2.timestamp_ms > r1.timestamp_ms else 0)
        self.assertEqual(self.client.list_offset(self.topic, 1, lc.OffsetKind.LATEST), 0)

    def test_fetch_respects_max_bytes_but_returns_one_record(self):
        self.client.produce(self.topic, 1, [lc.Message(value=b"a" * 100), lc.Message(value=b"b")])
        (first,) = self.client.fetch(self.topic, 1, 0, max_bytes=1)
        self.assertEqual(first.message.value, b"a" * 100)

    def test_long_poll_wakes_on_append(self):
        other = lc.LeveeClient(BROKER)
        try:
            cid = other.send(lambda c: lc.build_fetch(c, [(self.topic, 1, 0, 1 << 20)], max_wait_ms=10_000))
            time.sleep(0.2)
            start = time.monotonic()
            self.client.produce(self.topic, 1, [lc.Message(value=b"late")], acks=lc.Acks.WRITTEN)
            (res,) = lc.parse_fetch(other.wait(cid))
            self.assertLess(time.monotonic() - start, 5)
            self.assertEqual([r.message.value for r in res.records()], [b"late"])
        finally:
            other.close()

    def test_pipelining_and_acks_none(self):
        c = self.client
        none_cid = c.send(lambda cid: lc.build_produce(cid, lc.Acks.NONE, 0, [
            (self.topic, 0, lc.encode_record(lc.Message(value=b"fire-and-forget")))]))
        cids = [c.send(lambda cid, i=i: lc.build_produce(cid, lc.Acks.WRITTEN, 0, [
            (self.topic, 0, lc.encode_record(lc.Message(value=f"p{i}".encode())))])) for i in range(5)]
        meta_cid = c.send(lambda cid: lc.build_metadata(cid, [self.topic]))
        # Wait in reverse order: responses are matched by correlation id.
        self.assertEqual(lc.parse_metadata(c.wait(meta_cid)).topics[0].name, self.topic)
        offsets = [lc.parse_produce(c.wait(cid))[0].base_offset for cid in reversed(cids)]
        self.assertEqual(sorted(offsets), [1, 2, 3, 4, 5])
        self.assertNotIn(none_cid, c._stash)
        values = [r.message.value for r in c.fetch_all(self.topic, 0, 0, 6)]
        self.assertEqual(values, [b"fire-and-forget"] + [f"p{i}".encode() for i in range(5)])

    def test_metadata_and_describe(self):
        meta = self.client.metadata([self.topic])
        self.assertGreaterEqual(len(meta.shards), 1)
        (t,) = meta.topics
        self.assertEqual((t.name, t.error, [p for p, _ in t.partitions]), (self.topic, 0, [0, 1]))
        shards = {s.shard for s in meta.shards}
        self.assertTrue(all(s in shards for _, s in t.partitions))
        self.assertIn((self.topic, 2), self.client.list_topics())
        d = self.client.describe_topic(self.topic)
        self.assertEqual((d.name, d.partitions, len(d.partition_info)), (self.topic, 2, 2))
        self.client.alter_topic(self.topic, partitions=3, retention_bytes=2**64 - 1)
        d = self.client.describe_topic(self.topic)
        self.assertEqual((d.partitions, d.retention_bytes), (3, None))

    def test_unknown_topic_is_error_8(self):
        missing = f"missing-{uuid.uuid4().hex[:12]}"
        res = self.client.produce_runs([(missing, 0, lc.encode_record(lc.Message(value=b"v")))],
                                       acks=lc.Acks.WRITTEN)
        self.assertEqual(res[0].error, lc.Err.UNKNOWN_TOPIC)
        (f,) = self.client.fetch_blocks([(missing, 0, 0, 1024)])
        self.assertEqual(f.error, lc.Err.UNKNOWN_TOPIC)
        (lo,) = self.client.list_offsets([(missing, 0, lc.OffsetKind.LATEST, 0)])
        self.assertEqual(lo.error, lc.Err.UNKNOWN_TOPIC)
        self.assertEqual(self.client.metadata([missing]).topics[0].error, lc.Err.UNKNOWN_TOPIC)
        with self.assertRaises(lc.LeveeError) as cm:
            self.client.describe_topic(missing)
        self.assertEqual(cm.exception.code, lc.Err.UNKNOWN_TOPIC)
        # And an unknown partition of a known topic.
        res = self.client.produce_runs([(self.topic, 7, lc.encode_record(lc.Message(value=b"v")))])
        self.assertEqual(res[0].error, lc.Err.UNKNOWN_PARTITION)

    def test_bad_crc_is_error_6_and_stores_nothing(self):
        good = lc.encode_record(lc.Message(value=b"good"))
        bad = bytearray(lc.encode_record(lc.Message(value=b"bad")))
        bad[0] ^= 0xFF  # archive_crc
        res = self.client.produce_runs([(self.topic, 0, good + bytes(bad))], acks=lc.Acks.WRITTEN)
        self.assertEqual(res[0].error, lc.Err.CORRUPT_RECORD)
        self.assertEqual(self.client.list_offset(self.topic, 0, lc.OffsetKind.LATEST), 0)
        # A flipped archive byte (CRC now wrong) and non-zero padding are rejected the same way.
        flipped = bytearray(good)
        flipped[40] ^= 0x01
        padded = bytearray(good)
        padded[-1] = 1
        for run in (flipped, padded):
            res = self.client.produce_runs([(self.topic, 0, bytes(run))], acks=lc.Acks.WRITTEN)
            self.assertEqual(res[0].error, lc.Err.CORRUPT_RECORD)
        # The connection is still usable and the log still empty.
        self.assertEqual(self.client.fetch(self.topic, 0, 0), [])

    def test_request_level_errors(self):
        with self.assertRaises(lc.LeveeError) as cm:
            self.client.create_topic(self.topic)
        self.assertEqual(cm.exception.code, lc.Err.TOPIC_ALREADY_EXISTS)
        with self.assertRaises(lc.LeveeError) as cm:
            self.client.create_topic("bad/name")
        self.assertEqual(cm.exception.code, lc.Err.INVALID_TOPIC_NAME)
        frame = self.client.call(lambda c: lc.request_frame(42, c))
        self.assertEqual(lc.response_header(frame).error_code, lc.Err.UNKNOWN_API_KEY)
        frame = self.client.call(lambda c: lc.request_frame(lc.Api.LIST_TOPICS, c, b"\x00"))
        self.assertEqual(lc.response_header(frame).error_code, lc.Err.INVALID_REQUEST)
        frame = self.client.call(lambda c: lc.request_frame(lc.Api.LIST_TOPICS, c, api_version=2))
        self.assertEqual(lc.response_header(frame).error_code, lc.Err.UNSUPPORTED_VERSION)


if __name__ == "__main__":
    unittest.main()
