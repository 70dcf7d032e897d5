"""Splits a loopback capture of Kafka traffic into request and response frames: how the files
in tests/kafka/golden were made.

    tcpdump -i lo -w kafka.pcap 'tcp port KAFKA_PORT_0 or tcp port KAFKA_PORT_1' &
    ... run kcat, confluent-kafka or kafka-python against the broker ...
    python3 tests/kafka/capture_frames.py kafka.pcap OUT_DIR PREFIX KAFKA_PORT_0 [KAFKA_PORT_1 ...]

Each TCP stream's payload is reassembled in capture order (loopback does not reorder) and cut
at the 4-byte length prefixes. A request frame is written as
`PREFIX-<api>-v<version>-<n>.bin` (the bytes after its length prefix); the response to it,
matched by correlation id, as `PREFIX-<api>-v<version>-<n>.response.bin`. Needs only the
standard library."""
import os
import struct
import sys

API_NAMES = {
    0: "produce", 1: "fetch", 2: "list_offsets", 3: "metadata", 8: "offset_commit",
    9: "offset_fetch", 10: "find_coordinator", 11: "join_group", 12: "heartbeat",
    13: "leave_group", 14: "sync_group", 18: "api_versions", 19: "create_topics",
    20: "delete_topics", 22: "init_producer_id",
}


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    at = 24
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", data, at)
        at += 16
        frame = data[at:at + incl]
        at += incl
        if linktype == 1:  # Ethernet
            frame = frame[14:]
        elif linktype == 113:  # Linux cooked
            frame = frame[16:]
        elif linktype == 276:  # Linux cooked v2
            frame = frame[20:]
        if not frame or frame[0] >> 4 != 4 or frame[9] != 6:
            continue
        ihl = (frame[0] & 0xF) * 4
        total = struct.unpack_from(">H", frame, 2)[0]
        tcp = frame[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        yield sport, dport, seq, payload


def streams(path, ports):
    out = {}
    seen = {}
    for sport, dport, seq, payload in packets(path):
        if not payload or (sport not in ports and dport not in ports):
            continue
        key = (sport, dport)
        if seen.get(key) == (seq, len(payload)):
            continue  # a retransmission
        seen[key] = (seq, len(payload))
        out.setdefault(key, bytearray()).extend(payload)
    return out


def frames(buf):
    at = 0
    while at + 4 <= len(buf):
        n = struct.unpack_from(">i", buf, at)[0]
        if n < 0 or at + 4 + n > len(buf):
            break
        yield bytes(buf[at + 4:at + 4 + n])
        at += 4 + n


def main():
    pcap, out_dir, prefix = sys.argv[1:4]
    ports = {int(p) for p in sys.argv[4:]}
    os.makedirs(out_dir, exist_ok=True)
    by_stream = streams(pcap, ports)
    counts = {}
    for (sport, dport), buf in by_stream.items():
        if dport not in ports:
            continue
        responses = {}
        for r in frames(by_stream.get((dport, sport), b"")):
            responses[struct.unpack_from(">i", r, 0)[0]] = r
        for req in frames(buf):
            key, version, cid = struct.unpack_from(">hhi", req, 0)
            api = API_NAMES.get(key, f"api{key}")
            name = f"{prefix}-{api}-v{version}"
            counts[name] = counts.get(name, 0) + 1
            base = os.path.join(out_dir, f"{name}-{counts[name]}")
            with open(base + ".bin", "wb") as f:
                f.write(req)
            if cid in responses:
                with open(base + ".response.bin", "wb") as f:
                    f.write(responses[cid])
    for name, n in sorted(counts.items()):
        print(f"{name}: {n}")


if __name__ == "__main__":
    main()
