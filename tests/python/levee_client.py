"""A stdlib-only Levee client, written from docs/protocol.md alone.

Two layers:

* a sans-IO codec: request builders (``build_*``) return whole frames as ``bytes``, response
  parsers (``parse_*``) take whole frames; records are built with ``encode_record`` and read with
  ``decode_run`` (both CRCs checked, the rkyv archive of ``Message`` decoded);
* ``LeveeClient``: a blocking TCP connection that pipelines requests and matches responses by
  correlation id (they may arrive in any order).

Section numbers (``§``) refer to docs/protocol.md.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

# ---------------------------------------------------------------------------------------------
# Constants (§3, §5, §7, §8, §9)

HEADER_LEN = 16
FRAME_SIZE_MAX = 64 << 20
RECORD_HEADER_LEN = 32
RECORD_ALIGN = 16
RECORD_VERSION = 1
FLAG_NULL_VALUE = 1  # header flag: the value is null, not empty (docs/protocol.md §8.1)
ROOT_LEN = 56  # ArchivedMessage
INLINE_STR_MAX = 8
DEFAULT_BROKER = "127.0.0.1:7070"


class Api:
    API_VERSIONS = 0
    METADATA = 1
    CREATE_TOPIC = 2
    DELETE_TOPIC = 3
    ALTER_TOPIC = 4
    LIST_TOPICS = 5
    DESCRIBE_TOPIC = 6
    PRODUCE = 7
    FETCH = 8
    LIST_OFFSETS = 9


ERROR_NAMES = [
    "None", "Internal", "InvalidRequest", "UnknownApiKey", "UnsupportedVersion", "FrameTooLarge",
    "CorruptRecord", "RecordTooLarge", "UnknownTopic", "UnknownPartition", "OffsetOutOfRange",
    "TopicAlreadyExists", "InvalidTopicName", "InvalidConfig", "StorageFull", "StorageFailed",
    "Timeout", "ShuttingDown", "Busy",
]


class Err:
    NONE = 0
    INTERNAL = 1
    INVALID_REQUEST = 2
    UNKNOWN_API_KEY = 3
    UNSUPPORTED_VERSION = 4
    FRAME_TOO_LARGE = 5
    CORRUPT_RECORD = 6
    RECORD_TOO_LARGE = 7
    UNKNOWN_TOPIC = 8
    UNKNOWN_PARTITION = 9
    OFFSET_OUT_OF_RANGE = 10
    TOPIC_ALREADY_EXISTS = 11
    INVALID_TOPIC_NAME = 12
    INVALID_CONFIG = 13
    STORAGE_FULL = 14
    STORAGE_FAILED = 15
    TIMEOUT = 16
    SHUTTING_DOWN = 17
    BUSY = 18


RETRIABLE = frozenset({Err.STORAGE_FULL, Err.TIMEOUT, Err.SHUTTING_DOWN, Err.BUSY})


class Acks:
    NONE = 0
    WRITTEN = 1
    DURABLE = 2


class OffsetKind:
    EARLIEST = 0
    LATEST = 1
    TIMESTAMP = 2


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"Unknown({code})"


class LeveeError(Exception):
    """A non-zero error code, top-level or per block."""

    def __init__(self, code: int, message: str = ""):
        self.code = code
        self.message = message
        super().__init__(f"{error_name(code)} ({code}){': ' + message if message else ''}")

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


class DecodeError(Exception):
    """Bytes that are not a valid frame, body, record or archive."""


# ---------------------------------------------------------------------------------------------
# Primitive encodings (§4)


def _pad_len(position: int, align: int) -> int:
    return (-position) % align


class Writer:
    """Builds a frame; positions (for run alignment) count from the frame's first byte."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> "Writer":
        self.buf += struct.pack("<B", v)
        return self

    def u16(self, v: int) -> "Writer":
        self.buf += struct.pack("<H", v)
        return self

    def u32(self, v: int) -> "Writer":
        self.buf += struct.pack("<I", v)
        return self

    def u64(self, v: int) -> "Writer":
        self.buf += struct.pack("<Q", v)
        return self

    def i64(self, v: int) -> "Writer":
        self.buf += struct.pack("<q", v)
        return self

    def string(self, s: str) -> "Writer":
        b = s.encode("utf-8")
        if len(b) > 0xFFFF:
            raise ValueError("protocol strings are at most 65535 bytes")
        self.u16(len(b))
        self.buf += b
        return self

    def opt_u64(self, v: Optional[int]) -> "Writer":
        if v is None:
            return self.u8(0)
        return self.u8(1).u64(v)

    def count(self, n: int) -> "Writer":
        return self.u32(n)

    def run(self, run: bytes) -> "Writer":
        if len(run) % RECORD_ALIGN:
            raise ValueError("a record run is whole records (a multiple of 16 bytes)")
        self.u32(len(run))
        self.buf += bytes(_pad_len(len(self.buf), RECORD_ALIGN))
        self.buf += run
        return self


class Reader:
    """Reads a frame; ``pos`` counts from the frame's first byte."""

    def __init__(self, frame: bytes, pos: int = HEADER_LEN):
        self.frame = memoryview(frame)
        self.pos = pos

    def remaining(self) -> int:
        return len(self.frame) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.remaining() < n:
            raise DecodeError(f"field at byte {self.pos} needs {n} bytes, {self.remaining()} left")
        b = bytes(self.frame[self.pos:self.pos + n])
        self.pos += n
        return b

    def _unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def u8(self) -> int:
        return self._unpack("<B")

    def u16(self) -> int:
        return self._unpack("<H")

    def u32(self) -> int:
        return self._unpack("<I")

    def u64(self) -> int:
        return self._unpack("<Q")

    def i64(self) -> int:
        return self._unpack("<q")

    def string(self) -> str:
        n = self.u16()
        at = self.pos
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"string at byte {at} is not UTF-8") from e

    def opt_u64(self) -> Optional[int]:
        at = self.pos
        flag = self.u8()
        if flag == 0:
            return None
        if flag == 1:
            return self.u64()
        raise DecodeError(f"option flag at byte {at} is {flag}, not 0 or 1")

    def count(self, min_item: int) -> int:
        at = self.pos
        n = self.u32()
        if n * max(min_item, 1) > self.remaining():
            raise DecodeError(f"array count {n} at byte {at} larger than the frame")
        return n

    def run(self) -> bytes:
        at = self.pos
        n = self.u32()
        if n % RECORD_ALIGN:
            raise DecodeError(f"run length {n} at byte {at} is not a multiple of 16")
        pad = self.take(_pad_len(self.pos, RECORD_ALIGN))
        if any(pad):
            raise DecodeError(f"run padding after byte {at} is not zero")
        return self.take(n)

    def finish(self) -> None:
        if self.remaining():
            raise DecodeError(f"{self.remaining()} trailing bytes after the body")


# ---------------------------------------------------------------------------------------------
# Frames (§3)


def request_frame(api_key: int, correlation_id: int, body: bytes = b"", api_version: int = 0) -> bytes:
    size = 12 + len(body)
    return struct.pack("<IHHII", size, api_key, api_version, correlation_id, 0) + body


class _Body(Writer):
    """A Writer that already holds the 16 header bytes, so run padding is counted correctly."""

    def __init__(self, api_key: int, correlation_id: int, api_version: int = 0):
        super().__init__()
        self.buf += struct.pack("<IHHII", 0, api_key, api_version, correlation_id, 0)

    def frame(self) -> bytes:
        struct.pack_into("<I", self.buf, 0, len(self.buf) - 4)
        return bytes(self.buf)


@dataclass
class ResponseHeader:
    size: int
    api_key: int
    error_code: int
    correlation_id: int


def frame_len(buf: bytes, frame_size_max: int = FRAME_SIZE_MAX) -> Optional[int]:
    """Length of the whole frame at the start of ``buf``, or None while more bytes are needed."""
    if len(buf) < 4:
        return None
    total = struct.unpack_from("<I", buf, 0)[0] + 4
    if total > frame_size_max:
        raise DecodeError(f"frame of {total} bytes exceeds {frame_size_max}")
    if total < HEADER_LEN:
        raise DecodeError(f"frame of {total} bytes is shorter than its header")
    return total if len(buf) >= total else None


def response_header(frame: bytes) -> ResponseHeader:
    if len(frame) < HEADER_LEN:
        raise DecodeError("frame shorter than a header")
    size, key, err, cid, _reserved = struct.unpack_from("<IHHII", frame, 0)
    if size + 4 != len(frame):
        raise DecodeError(f"size field says {size + 4} bytes, frame has {len(frame)}")
    return ResponseHeader(size, key, err, cid)


def check_response(frame: bytes, api_key: int) -> Reader:
    """Raises LeveeError for a top-level error; returns a Reader positioned at the body."""
    h = response_header(frame)
    if h.api_key != api_key:
        raise DecodeError(f"response for api {h.api_key}, expected {api_key}")
    if h.error_code != Err.NONE:
        try:
            msg = Reader(frame).string()
        except DecodeError:
            msg = ""
        raise LeveeError(h.error_code, msg)
    return Reader(frame)


# ---------------------------------------------------------------------------------------------
# Records (§8)


@dataclass
class Message:
    value: bytes = b""
    key: Optional[bytes] = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = 0
    producer_id: int = 0
    sequence: int = 0


@dataclass
class Record:
    offset: int
    timestamp_ms: int  # append time, set by the broker
    message: Message
    archive_crc: int
    header_crc: int


def _encode_str_len(n: int) -> int:
    return (n & 0x3F) | 0x80 | ((n & ~0x3F) << 2)


def _decode_str_len(v: int) -> int:
    return (v & 0x3F) | ((v & ~0xFF) >> 2)


def encode_archive(m: Message) -> bytes:
    """The rkyv 0.8.18 archive of ``Message``, byte for byte as Rust writes it (§8.3)."""
    buf = bytearray()
    key_pos = 0
    if m.key is not None:
        key_pos = len(buf)
        buf += m.key
    value_pos = len(buf)
    buf += m.value
    hdrs = []
    for hkey, hval in m.headers:
        kb = hkey.encode("utf-8")
        kpos = None
        if len(kb) > INLINE_STR_MAX:
            if len(kb) > (1 << 30) - 1:
                raise ValueError("header key too long")
            kpos = len(buf)
            buf += kb
        vpos = len(buf)
        buf += hval
        hdrs.append((kb, kpos, vpos, len(hval)))
    buf += bytes(_pad_len(len(buf), 4))
    headers_pos = len(buf)
    for kb, kpos, vpos, vlen in hdrs:
        p = len(buf)
        if kpos is None:
            buf += kb + b"\xff" * (INLINE_STR_MAX - len(kb))
        else:
            buf += struct.pack("<Ii", _encode_str_len(len(kb)), kpos - p)
        buf += struct.pack("<iI", vpos - (p + 8), vlen)
    buf += bytes(_pad_len(len(buf), 8))
    root = len(buf)
    buf += struct.pack("<qQQ", m.timestamp_ms, m.producer_id, m.sequence)
    if m.key is None:
        buf += bytes(12)
    else:
        buf += struct.pack("<B3xiI", 1, key_pos - (root + 28), len(m.key))
    buf += struct.pack("<iI", value_pos - (root + 36), len(m.value))
    buf += struct.pack("<iI", headers_pos - (root + 44), len(m.headers))
    buf += bytes(4)
    assert len(buf) - root == ROOT_LEN and len(buf) % 8 == 0
    return bytes(buf)


def _slice(archive: bytes, at: int, rel: int, n: int, elem: int = 1, align: int = 1) -> tuple[int, bytes]:
    start = at + rel
    end = start + n * elem
    if start < 0 or end > len(archive) or start % align:
        raise DecodeError(f"archive pointer at {at} to {start}..{end} is out of bounds or misaligned")
    return start, archive[start:end]


def _decode_string(archive: bytes, p: int) -> str:
    repr8 = archive[p:p + 8]
    if len(repr8) != 8:
        raise DecodeError("string out of bounds")
    if repr8[0] & 0xC0 != 0x80:
        n = repr8.find(b"\xff")
        raw = repr8 if n < 0 else repr8[:n]
    else:
        enc, rel = struct.unpack("<Ii", repr8)
        n = _decode_str_len(enc)
        if n <= INLINE_STR_MAX:
            raise DecodeError("out-of-line string of length <= 8")
        _, raw = _slice(archive, p, rel, n)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("string is not UTF-8") from e


def decode_archive(archive: bytes) -> Message:
    """Reads the rkyv archive of ``Message`` (§8.4), bounds-checking every pointer."""
    if len(archive) < ROOT_LEN or (len(archive) - ROOT_LEN) % 8:
        raise DecodeError(f"archive of {len(archive)} bytes cannot hold an aligned root")
    r = len(archive) - ROOT_LEN
    ts, pid, seq = struct.unpack_from("<qQQ", archive, r)
    tag, krel, klen = struct.unpack_from("<B3xiI", archive, r + 24)
    vrel, vlen = struct.unpack_from("<iI", archive, r + 36)
    hrel, hcount = struct.unpack_from("<iI", archive, r + 44)
    if tag == 0:
        key = None
    elif tag == 1:
        _, key = _slice(archive, r + 28, krel, klen)
    else:
        raise DecodeError(f"option tag {tag}")
    _, value = _slice(archive, r + 36, vrel, vlen)
    hstart, _ = _slice(archive, r + 44, hrel, hcount, 16, 4)
    headers = []
    for i in range(hcount):
        p = hstart + 16 * i
        hkey = _decode_string(archive, p)
        hvrel, hvlen = struct.unpack_from("<iI", archive, p + 8)
        _, hval = _slice(archive, p + 8, hvrel, hvlen)
        headers.append((hkey, hval))
    return Message(value=value, key=key, headers=headers, timestamp_ms=ts, producer_id=pid, sequence=seq)


def crc32(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def encode_record(m: Message) -> bytes:
    """One record as a producer sends it (§8.1): broker fields zero, version 1."""
    archive = encode_archive(m)
    header = struct.pack("<IIQqBBHI", crc32(archive), len(archive), 0, 0, RECORD_VERSION, 0, 0, 0)
    return header + archive + bytes(_pad_len(len(archive), RECORD_ALIGN))


def encode_run(messages: Iterable[Message]) -> bytes:
    return b"".join(encode_record(m) for m in messages)


def stamp_record(record: bytes, offset: int, timestamp_ms: int) -> bytes:
    """What the broker does to a produced record (used by the golden test)."""
    b = bytearray(record)
    struct.pack_into("<QqBBH", b, 8, offset, timestamp_ms, RECORD_VERSION, 0, 0)
    struct.pack_into("<I", b, 28, crc32(bytes(b[:28])))
    return bytes(b)


def decode_run(run: bytes) -> list[Record]:
    """Every record of a fetched run, each checked (§8.1) and its archive decoded."""
    out = []
    pos = 0
    while pos < len(run):
        if len(run) - pos < RECORD_HEADER_LEN:
            raise DecodeError(f"record at {pos}: truncated header")
        acrc, alen, offset, ts, version, flags, reserved, hcrc = struct.unpack_from("<IIQqBBHI", run, pos)
        if crc32(run[pos:pos + 28]) != hcrc:
            raise DecodeError(f"record at {pos}: header crc mismatch")
        if version != RECORD_VERSION or flags & ~FLAG_NULL_VALUE or reserved:
            raise DecodeError(f"record at {pos}: version {version} / reserved bits")
        total = RECORD_HEADER_LEN + alen + _pad_len(alen, RECORD_ALIGN)
        if alen == 0 or pos + total > len(run):
            raise DecodeError(f"record at {pos}: bad archive length {alen}")
        archive = run[pos + RECORD_HEADER_LEN:pos + RECORD_HEADER_LEN + alen]
        if crc32(archive) != acrc:
            raise DecodeError(f"record at {pos}: archive crc mismatch")
        if any(run[pos + RECORD_HEADER_LEN + alen:pos + total]):
            raise DecodeError(f"record at {pos}: non-zero padding")
        out.append(Record(offset, ts, decode_archive(archive), acrc, hcrc))
        pos += total
    return out


# ---------------------------------------------------------------------------------------------
# Request builders and response parsers (§6)


@dataclass
class ShardAddr:
    shard: int
    host: str
    port: int


@dataclass
class TopicMetadata:
    name: str
    error: int
    partitions: list[tuple[int, int]]  # (partition, shard)


@dataclass
class Metadata:
    shards: list[ShardAddr]
    topics: list[TopicMetadata]


@dataclass
class PartitionDescription:
    partition: int
    shard: int
    earliest: int
    next: int
    durable: int
    size_bytes: int


@dataclass
class TopicDescription:
    name: str
    partitions: int
    retention_bytes: Optional[int]
    retention_ms: Optional[int]
    partition_info: list[PartitionDescription]


@dataclass
class ProduceResult:
    topic: str
    partition: int
    error: int
    base_offset: int
    timestamp_ms: int


@dataclass
class FetchResult:
    topic: str
    partition: int
    error: int
    earliest: int
    next: int
    run: bytes

    def records(self) -> list[Record]:
        return decode_run(self.run)


@dataclass
class ListOffsetsResult:
    topic: str
    partition: int
    error: int
    offset: int


def build_api_versions(cid: int, client_id: str) -> bytes:
    return _Body(Api.API_VERSIONS, cid).string(client_id).frame()


def parse_api_versions(frame: bytes) -> tuple[dict[int, tuple[int, int]], str]:
    r = check_response(frame, Api.API_VERSIONS)
    apis = {}
    for _ in range(r.count(6)):
        k, lo, hi = r.u16(), r.u16(), r.u16()
        apis[k] = (lo, hi)
    broker = r.string()
    r.finish()
    return apis, broker


def build_metadata(cid: int, topics: Sequence[str] = ()) -> bytes:
    w = _Body(Api.METADATA, cid).count(len(topics))
    for t in topics:
        w.string(t)
    return w.frame()


def parse_metadata(frame: bytes) -> Metadata:
    r = check_response(frame, Api.METADATA)
    shards = [ShardAddr(r.u16(), r.string(), r.u16()) for _ in range(r.count(6))]
    topics = []
    for _ in range(r.count(8)):
        name, err = r.string(), r.u16()
        parts = [(r.u32(), r.u16()) for _ in range(r.count(6))]
        topics.append(TopicMetadata(name, err, parts))
    r.finish()
    return Metadata(shards, topics)


def build_create_topic(cid: int, name: str, partitions: int = 1,
                       retention_bytes: Optional[int] = None, retention_ms: Optional[int] = None) -> bytes:
    return (_Body(Api.CREATE_TOPIC, cid).string(name).u32(partitions)
            .opt_u64(retention_bytes).opt_u64(retention_ms).frame())


def build_delete_topic(cid: int, name: str) -> bytes:
    return _Body(Api.DELETE_TOPIC, cid).string(name).frame()


def build_alter_topic(cid: int, name: str, partitions: Optional[int] = None,
                      retention_bytes: Optional[int] = None, retention_ms: Optional[int] = None) -> bytes:
    return (_Body(Api.ALTER_TOPIC, cid).string(name).opt_u64(partitions)
            .opt_u64(retention_bytes).opt_u64(retention_ms).frame())


def parse_done(frame: bytes, api_key: int) -> None:
    check_response(frame, api_key).finish()


def build_list_topics(cid: int) -> bytes:
    return _Body(Api.LIST_TOPICS, cid).frame()


def parse_list_topics(frame: bytes) -> list[tuple[str, int]]:
    r = check_response(frame, Api.LIST_TOPICS)
    out = [(r.string(), r.u32()) for _ in range(r.count(6))]
    r.finish()
    return out


def build_describe_topic(cid: int, name: str) -> bytes:
    return _Body(Api.DESCRIBE_TOPIC, cid).string(name).frame()


def parse_describe_topic(frame: bytes) -> TopicDescription:
    r = check_response(frame, Api.DESCRIBE_TOPIC)
    name, parts, rb, rm = r.string(), r.u32(), r.opt_u64(), r.opt_u64()
    info = [PartitionDescription(r.u32(), r.u16(), r.u64(), r.u64(), r.u64(), r.u64())
            for _ in range(r.count(38))]
    r.finish()
    return TopicDescription(name, parts, rb, rm, info)


def build_produce(cid: int, acks: int, timeout_ms: int, blocks: Sequence[tuple[str, int, bytes]]) -> bytes:
    """``blocks``: (topic, partition, run of whole records)."""
    w = _Body(Api.PRODUCE, cid).u8(acks).u32(timeout_ms).count(len(blocks))
    for topic, partition, run in blocks:
        w.string(topic).u32(partition).run(run)
    return w.frame()


def parse_produce(frame: bytes) -> list[ProduceResult]:
    r = check_response(frame, Api.PRODUCE)
    out = [ProduceResult(r.string(), r.u32(), r.u16(), r.u64(), r.i64()) for _ in range(r.count(24))]
    r.finish()
    return out


def build_fetch(cid: int, blocks: Sequence[tuple[str, int, int, int]], max_wait_ms: int = 0,
                min_bytes: int = 1, max_bytes: int = 16 << 20) -> bytes:
    """``blocks``: (topic, partition, offset, max_bytes)."""
    w = _Body(Api.FETCH, cid).u32(max_wait_ms).u32(min_bytes).u32(max_bytes).count(len(blocks))
    for topic, partition, offset, block_max in blocks:
        w.string(topic).u32(partition).u64(offset).u32(block_max)
    return w.frame()


def parse_fetch(frame: bytes) -> list[FetchResult]:
    r = check_response(frame, Api.FETCH)
    out = [FetchResult(r.string(), r.u32(), r.u16(), r.u64(), r.u64(), r.run()) for _ in range(r.count(28))]
    r.finish()
    return out


def build_list_offsets(cid: int, lookups: Sequence[tuple[str, int, int, int]]) -> bytes:
    """``lookups``: (topic, partition, kind, timestamp_ms)."""
    w = _Body(Api.LIST_OFFSETS, cid).count(len(lookups))
    for topic, partition, kind, ts in lookups:
        w.string(topic).u32(partition).u8(kind).i64(ts)
    return w.frame()


def parse_list_offsets(frame: bytes) -> list[ListOffsetsResult]:
    r = check_response(frame, Api.LIST_OFFSETS)
    out = [ListOffsetsResult(r.string(), r.u32(), r.u16(), r.u64()) for _ in range(r.count(16))]
    r.finish()
    return out


# ---------------------------------------------------------------------------------------------
# Connection (§1, §2)


def parse_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class LeveeClient:
    """One TCP connection. Requests may be pipelined with ``send`` / ``wait``; the convenience
    methods send one request and wait for its response."""

    def __init__(self, address: str = DEFAULT_BROKER, timeout: float = 30.0, client_id: str = "levee-py",
                 handshake: bool = True):
        host, port = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._cids = itertools.count(1)
        self._buf = bytearray()
        self._stash: dict[int, bytes] = {}
        self.apis: dict[int, tuple[int, int]] = {}
        self.broker = ""
        if handshake:
            self.apis, self.broker = parse_api_versions(self.call(lambda c: build_api_versions(c, client_id)))
            for key in range(10):
                lo, hi = self.apis.get(key, (1, 0))
                if not lo <= 0 <= hi:
                    raise LeveeError(Err.UNSUPPORTED_VERSION, f"broker does not speak api {key} v0")

    @classmethod
    def from_env(cls, **kw) -> "LeveeClient":
        return cls(os.environ.get("LEVEE_BROKER") or DEFAULT_BROKER, **kw)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "LeveeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_cid(self) -> int:
        return next(self._cids) & 0xFFFFFFFF

    def send(self, build) -> int:
        """``build(cid) -> frame``; returns the correlation id."""
        cid = self.next_cid()
        self.sock.sendall(build(cid))
        return cid

    def _read_frame(self) -> bytes:
        while True:
            n = frame_len(self._buf)
            if n is not None:
                frame = bytes(self._buf[:n])
                del self._buf[:n]
                return frame
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self._buf += chunk

    def wait(self, cid: int) -> bytes:
        """The response frame for ``cid``; responses for other ids are kept for their waiters."""
        while cid not in self._stash:
            frame = self._read_frame()
            self._stash[response_header(frame).correlation_id] = frame
        return self._stash.pop(cid)

    def call(self, build) -> bytes:
        return self.wait(self.send(build))

    # -- APIs ---------------------------------------------------------------------------------

    def metadata(self, topics: Sequence[str] = ()) -> Metadata:
        return parse_metadata(self.call(lambda c: build_metadata(c, topics)))

    def create_topic(self, name: str, partitions: int = 1, retention_bytes: Optional[int] = None,
                     retention_ms: Optional[int] = None) -> None:
        parse_done(self.call(lambda c: build_create_topic(c, name, partitions, retention_bytes, retention_ms)),
                   Api.CREATE_TOPIC)

    def delete_topic(self, name: str) -> None:
        parse_done(self.call(lambda c: build_delete_topic(c, name)), Api.DELETE_TOPIC)

    def alter_topic(self, name: str, partitions: Optional[int] = None, retention_bytes: Optional[int] = None,
                    retention_ms: Optional[int] = None) -> None:
        parse_done(self.call(lambda c: build_alter_topic(c, name, partitions, retention_bytes, retention_ms)),
                   Api.ALTER_TOPIC)

    def list_topics(self) -> list[tuple[str, int]]:
        return parse_list_topics(self.call(build_list_topics))

    def describe_topic(self, name: str) -> TopicDescription:
        return parse_describe_topic(self.call(lambda c: build_describe_topic(c, name)))

    def produce_runs(self, blocks: Sequence[tuple[str, int, bytes]], acks: int = Acks.DURABLE,
                     timeout_ms: int = 10_000) -> Optional[list[ProduceResult]]:
        """Sends raw runs; returns the per-block results (None for acks=none: no response)."""
        cid = self.send(lambda c: build_produce(c, acks, timeout_ms, blocks))
        if acks == Acks.NONE:
            return None
        return parse_produce(self.wait(cid))

    def produce(self, topic: str, partition: int, messages: Iterable[Message], acks: int = Acks.DURABLE,
                timeout_ms: int = 10_000) -> Optional[ProduceResult]:
        """Produces one batch; raises LeveeError on a per-block error; returns base offset and time."""
        results = self.produce_runs([(topic, partition, encode_run(messages))], acks, timeout_ms)
        if results is None:
            return None
        (res,) = results
        if res.error:
            raise LeveeError(res.error, f"produce to {topic}/{partition}")
        return res

    def fetch_blocks(self, blocks: Sequence[tuple[str, int, int, int]], max_wait_ms: int = 0,
                     min_bytes: int = 1, max_bytes: int = 16 << 20) -> list[FetchResult]:
        return parse_fetch(self.call(lambda c: build_fetch(c, blocks, max_wait_ms, min_bytes, max_bytes)))

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20,
              max_wait_ms: int = 0) -> list[Record]:
        """Records from ``offset`` (maybe fewer than exist); raises LeveeError on a block error."""
        (res,) = self.fetch_blocks([(topic, partition, offset, max_bytes)], max_wait_ms=max_wait_ms)
        if res.error:
            raise LeveeError(res.error, f"fetch {topic}/{partition}@{offset} (earliest {res.earliest}, next {res.next})")
        return res.records()

    def fetch_all(self, topic: str, partition: int, offset: int, end: int) -> list[Record]:
        """Every record in ``offset..end``, fetching as often as needed."""
        out: list[Record] = []
        while offset < end:
            got = self.fetch(topic, partition, offset)
            if not got:
                break
            out.extend(got)
            offset = got[-1].offset + 1
        return out

    def list_offsets(self, lookups: Sequence[tuple[str, int, int, int]]) -> list[ListOffsetsResult]:
        return parse_list_offsets(self.call(lambda c: build_list_offsets(c, lookups)))

    def list_offset(self, topic: str, partition: int, kind: int, timestamp_ms: int = 0) -> int:
        (res,) = self.list_offsets([(topic, partition, kind, timestamp_ms)])
        if res.error:
            raise LeveeError(res.error, f"list offsets {topic}/{partition}")
        return res.offset
