"""Transport figures, each side by side in one run on loopback.

    python bench/transport.py --gib 1 --reps 3 [--json out.json]

- fetching over `tcp` into 2 MB blocks vs a plain Python socket pair
  (`sendall` / `recv_into`) moving the same bytes;
- the same-host short-circuit (advertise, then read the bytes in place once, block by
  block) vs a `memcpy` of the same bytes in the same 2 MB pieces (and, for
  reference, vs one 1 GiB `memcpy`, which glibc does with non-temporal stores);
- 4 KiB fetch latency over `tcp` (p50, p99);
- the serving server's private memory (RssAnon) at its peak while 4 readers fetch.
The server is a real `python -m netspark.server` process; readers are this process.
Ratios are medians of per-repetition ratios of neighbouring runs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.server.worker import ExecutorLink
from netspark.transport.fetch import Fetcher, FetchRequest, PeerAddress
from netspark.transport.protocol import MapAttempt

ROOT = Path(__file__).resolve().parents[1]
SECRET = secrets.token_hex(16)
APP = "bench-transport"
CHUNK = 2 << 20

SENDER = """
import os, socket, sys
size, rounds = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
data = memoryview(os.urandom(size))  # distinct, touched memory, as a server's blocks are
chunk = 2 << 20
for _ in range(rounds):
    conn, _ = listener.accept()
    for start in range(0, size, chunk):
        conn.sendall(data[start:start + chunk])
    conn.close()
"""


def conf(**settings: str) -> NetsparkConf:
    return NetsparkConf.from_spark({f"spark.netspark.{k}": v for k, v in settings.items()})


def start_server(pool: str) -> tuple[subprocess.Popen, PeerAddress, str]:
    env = {**os.environ, "NETSPARK_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netspark.server", "--app-id", APP, "--log-level", "WARNING",
         "--conf", f"spark.netspark.buffer.poolSize={pool}"],
        stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT)
    info = json.loads(proc.stdout.readline())
    return proc, PeerAddress(**info["address"]), "\0" + info["local"]


def commit_raw(local_name: str, shuffle: int, size: int) -> None:
    """Commits `size` bytes as one output (map 0, reduce 0) on the server."""
    link = ExecutorLink(local_name, conf(), secret=SECRET.encode(), app_id=APP)
    writer = link.writer(shuffle, 0, 0)
    chunk = os.urandom(CHUNK)
    for _ in range(size // CHUNK):
        writer.stream.write(chunk)
    writer.stream.write(chunk[:size % CHUNK])
    writer.partitions[0] = (1, writer.stream.cut())
    writer.commit()
    link.close()


class PlainSender:
    """The baseline: a process that `sendall`s `size` bytes per connection."""

    def __init__(self, size: int, rounds: int) -> None:
        self.size = size
        self.proc = subprocess.Popen([sys.executable, "-c", SENDER, str(size), str(rounds)],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def receive_seconds(self, target: memoryview) -> float:
        start = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", self.port))
        got = 0
        while got < self.size:
            got += sock.recv_into(target[got:got + CHUNK])
        sock.close()
        return time.perf_counter() - start


def fetch_seconds(fetcher: Fetcher, req: FetchRequest, consume: memoryview | None) -> float:
    start = time.perf_counter()
    landed = fetcher.fetch_one(req)
    if consume is not None:  # read the bytes once, in place
        pos = 0
        for ext in landed.extents:
            view = landed.arena.block_view(ext.block_id)[ext.offset:ext.offset + ext.length]
            consume[pos:pos + ext.length] = view
            pos += ext.length
    took = time.perf_counter() - start
    for block in {e.block_id for e in landed.extents}:
        landed.release(block)
    return took


def rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def peak_memory(pool: BlockPool, server: subprocess.Popen, req: FetchRequest,
                readers: int = 4) -> dict[str, int]:
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_anon_kib(server.pid))

    def read() -> None:
        fetcher = Fetcher(pool, conf(localShortCircuit="false"), secret=SECRET.encode(),
                          app_id=APP)
        fetch_seconds(fetcher, req, None)
        fetcher.close()

    idle = rss_anon_kib(server.pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    return {"idle_rss_anon_kib": idle, "peak_rss_anon_kib": peak[0], "readers": readers}


def measure(gib: float, reps: int) -> dict[str, object]:
    size = int(gib * (1 << 30)) // CHUNK * CHUNK
    server, address, local_name = start_server(pool=f"{2 * size >> 20}m")
    try:
        commit_raw(local_name, 1, size)
        commit_raw(local_name, 2, 4096)
        reader_arena = Arena.create(conf(**{"buffer.poolSize": f"{size * 5 >> 20}m"}))
        pool = BlockPool(reader_arena, batch=64)
        tcp = Fetcher(pool, conf(localShortCircuit="false"), secret=SECRET.encode(), app_id=APP)
        local = Fetcher(pool, conf(), secret=SECRET.encode(), app_id=APP)
        big = FetchRequest(address, 1, 0, (MapAttempt(0, 0),))
        small = FetchRequest(address, 2, 0, (MapAttempt(0, 0),))
        target = memoryview(bytearray(size))
        source = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))
        times: dict[str, list[float]] = {
            k: [] for k in ("tcp", "socket", "local", "memcpy", "memcpy_whole")}
        sender = PlainSender(size, reps + 1)
        for rep in range(reps + 1):  # round 0 warms up: first touches of fresh memory
            if rep == 1:
                times = {k: [] for k in times}
            times["tcp"].append(fetch_seconds(tcp, big, None))
            times["socket"].append(sender.receive_seconds(target))
            times["local"].append(fetch_seconds(local, big, target))
            start = time.perf_counter()
            for pos in range(0, size, CHUNK):  # as the reader meets the bytes: block by block
                target[pos:pos + CHUNK] = source[pos:pos + CHUNK]
            times["memcpy"].append(time.perf_counter() - start)
            start = time.perf_counter()
            target[:] = source
            times["memcpy_whole"].append(time.perf_counter() - start)
            print("  rep: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
                  file=sys.stderr)
        latency = sorted(fetch_seconds(tcp, small, None) for _ in range(2000))
        memory = peak_memory(pool, server, FetchRequest(address, 1, 0, (MapAttempt(0, 0),)))
        sender.proc.wait()
        for fetcher in (tcp, local):
            fetcher.close()
        reader_arena.close()
    finally:
        server.terminate()
        server.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    # ratios of neighbours in time (the same repetition), so the machine's drift cancels
    paired = {"tcp_vs_socket": statistics.median(
                  s / t for s, t in zip(times["socket"], times["tcp"], strict=True)),
              "local_vs_memcpy": statistics.median(
                  m / c for m, c in zip(times["memcpy"], times["local"], strict=True)),
              "local_vs_memcpy_whole": statistics.median(
                  m / c for m, c in zip(times["memcpy_whole"], times["local"], strict=True))}
    return {"bytes": size, "times_s": times, "median_s": med, "paired": paired, "latency_4k_us": {
        "p50": latency[len(latency) // 2] * 1e6, "p99": latency[int(len(latency) * 0.99)] * 1e6},
        "memory": memory}


def report(r: dict) -> str:
    gb = r["bytes"] / 1e9
    med = r["median_s"]
    mem = r["memory"]
    rows = [
        ("tcp fetch into blocks vs plain socket sendall/recv_into (throughput)",
         f"{r['paired']['tcp_vs_socket']:.2f}x",
         f"{gb / med['tcp']:.2f} vs {gb / med['socket']:.2f} GB/s", ">= 0.9x"),
        ("local short-circuit (advertise + read once in place) vs memcpy in 2 MB pieces",
         f"{r['paired']['local_vs_memcpy']:.2f}x",
         f"{gb / med['local']:.2f} vs {gb / med['memcpy']:.2f} GB/s", ">= 0.8x"),
        ("the same vs one 1 GiB memcpy (non-temporal stores)",
         f"{r['paired']['local_vs_memcpy_whole']:.2f}x",
         f"{gb / med['local']:.2f} vs {gb / med['memcpy_whole']:.2f} GB/s", ""),
        ("4 KiB fetch latency over tcp, p50 / p99",
         f"{r['latency_4k_us']['p50']:.0f} / {r['latency_4k_us']['p99']:.0f} us", "", ""),
        (f"serving server's private memory, idle -> peak with {mem['readers']} readers",
         f"{mem['idle_rss_anon_kib'] >> 10} -> {mem['peak_rss_anon_kib'] >> 10} MiB",
         f"each reader fetching {r['bytes'] >> 20} MiB", "bounded"),
    ]
    lines = ["| figure | measured | detail | target |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = measure(args.gib, args.reps)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
