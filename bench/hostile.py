"""Hostile input, slow clients and large objects against `dra-bridge serve --dev`, with figures.

    python bench/hostile.py fuzz  [--cases 100000] [--seed 14] [--workers 8]
    python bench/hostile.py slow  [--connections 2000] [--seconds 20]
    python bench/hostile.py large [--pods 4] [--containers 15000] [--bound 20000]
    python bench/hostile.py all

Each command starts `dra-bridge serve --dev` in a fresh folder (its own certificates, in-memory
cluster, example policies, decision log at .dra-bridge/audit.log) on a free port of 127.0.0.1, as a
separate process, and attacks it over TLS:

- fuzz: the seeded hostile reviews of tests/fuzz/reviews.py; prints the status counts, 5xx, hangs
  (no answer within 10 s), that the server is healthy after, and checks the decision log: one record
  per answer, no gap in seq, every readable uid exactly once; then `dra-bridge audit --summary`'s
  sequence line.
- slow: keeps N half-sent connections open (a quarter each: TCP without a TLS handshake, TLS without
  a request, half the headers, half the body; each reopened as soon as the server closes it) while a
  genuine review is sent every 50 ms; prints the genuine reviews' statuses and latencies and how long
  the server held each kind of slow connection.
- large: sends Pods of 15,000 containers with legacy GPU requests (1.2 MiB each) at once while a
  genuine review is sent every 20 ms; prints what the large Pods got and the small reviews' latency.

Exit status 1 when a 5xx, a hang, a lost record or an unanswered genuine review is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.reviews import Fuzzer  # noqa: E402

HANG = 10.0  # the apiserver's longest webhook timeout


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    url: str
    port: int
    folder: Path
    ca: Path
    process: subprocess.Popen[bytes]

    @property
    def audit_log(self) -> Path:
        return self.folder / ".dra-bridge" / "audit.log"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@contextlib.contextmanager
def serve_dev(**env: str) -> Iterator[Served]:
    """`dra-bridge serve --dev` in a fresh folder, on a free port, until the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="dra-bridge-hostile-"))
    port = free_port()
    environment = {**os.environ, "DRA_BRIDGE_LOG_LEVEL": "warning", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "serve", "--dev", "--port", str(port), "--policies", str(ROOT / "policies")],
        cwd=folder,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.err", "wb"),  # noqa: SIM115 - the child owns it
    )
    served = Served(f"https://localhost:{port}", port, folder, folder / "certs" / "dev" / "ca.crt", process)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {(folder / 'server.err').read_text()[-2000:]}")
        if served.ca.exists():
            try:
                with httpx.Client(verify=served.context(), timeout=2) as client:
                    if client.get(f"{served.url}/readyz").status_code == 200:
                        break
            except (httpx.HTTPError, ssl.SSLError, OSError):
                pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become ready in 60 s")
        time.sleep(0.2)
    try:
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(folder, ignore_errors=True)  # kept, with server.err, when the block failed


def genuine_review(uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "trainer", "namespace": "team-a"},
                "spec": {"containers": [{"name": "main", "image": "r/a:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            },
        },
    }


# -- fuzz ----------------------------------------------------------------------------------------
async def _fuzz(served: Served, cases: int, seed: int, workers: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    hangs, sent_uids = 0, []
    failures: list[str] = []
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=workers * 4)

    async def worker() -> None:
        nonlocal hangs
        async with httpx.AsyncClient(verify=served.context(), timeout=HANG, base_url=served.url) as client:
            while (case := await queue.get()) is not None:
                try:
                    response = await client.post(case.path, content=case.body, headers={"content-type": "application/json"})
                except httpx.TimeoutException:
                    hangs += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code >= 500 and len(failures) < 5:
                    failures.append(f"{response.status_code} {case.mutations}: {response.text[:200]}")

    started = time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    for case in Fuzzer(seed).cases(cases):
        if case.uid is not None:
            sent_uids.append(case.uid)
        await queue.put(case)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return {
        "seconds": time.monotonic() - started,
        "statuses": statuses,
        "hangs": hangs,
        "failures": failures,
        "uids": sent_uids,
    }


def fuzz(cases: int, seed: int, workers: int) -> bool:
    with serve_dev() as served:
        result = asyncio.run(_fuzz(served, cases, seed, workers))
        with httpx.Client(verify=served.context(), timeout=HANG, base_url=served.url) as client:
            healthy = client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
            genuine = client.post("/mutate", json=genuine_review("after-the-fuzz")).status_code == 200
        time.sleep(0.2)
        records = [json.loads(line) for line in served.audit_log.read_text(encoding="utf-8").splitlines()]
        summary = subprocess.run(
            [sys.executable, "-m", "webhook", "audit", "--summary", "--file", str(served.audit_log)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    statuses = result["statuses"]
    answered = sum(statuses.values())
    by_uid = Counter(r["uid"] for r in records)
    seqs = [r["seq"] for r in records]
    wrong_uids = sum(by_uid[uid] != 1 for uid in result["uids"])
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(f"fuzz: {cases:,} hostile reviews (seed {seed}, {workers} connections) in {result['seconds']:.0f} s "
          f"({cases / result['seconds']:.0f}/s)")
    print("  statuses: " + ", ".join(f"{status}: {n:,}" for status, n in sorted(statuses.items())))
    print(f"  5xx: {server_errors}, hangs (no answer in {HANG:g} s): {result['hangs']}")
    print(f"  healthy after: {healthy}, a genuine review after: {'200' if genuine else 'FAILED'}")
    print(f"  decision log: {len(records):,} records for {answered + 1:,} answers, seq 1..{max(seqs, default=0):,} "
          f"{'without a gap' if seqs == list(range(1, len(seqs) + 1)) else 'WITH GAPS'}; "
          f"{len(result['uids']):,} readable uids, {wrong_uids} not recorded exactly once")
    print("  audit --summary: " + next((line for line in summary.splitlines() if line.startswith("sequence")), "?"))
    for failure in result["failures"]:
        print("  " + failure)
    return (
        server_errors == 0
        and result["hangs"] == 0
        and healthy
        and genuine
        and len(records) == answered + 1
        and wrong_uids == 0
        and seqs == list(range(1, len(seqs) + 1))
    )


# -- slow ----------------------------------------------------------------------------------------
KINDS = ("no-handshake", "no-request", "half-headers", "half-body")


async def _slow_connection(served: Served, kind: str, context: ssl.SSLContext, held: dict[str, list[float]], stop: asyncio.Event, open_now: Counter[str]) -> None:
    body = json.dumps(genuine_review("half-body")).encode()
    while not stop.is_set():
        try:
            if kind == "no-handshake":
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                writer.write(b"\x16\x03\x01")
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", served.port, ssl=context, server_hostname="localhost"), HANG
                )
                if kind == "half-headers":
                    writer.write(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl")
                elif kind == "half-body":
                    writer.write(
                        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
                        + body[:200]
                    )
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.05)
            continue
        opened = time.monotonic()
        open_now[kind] += 1
        try:
            stopped = asyncio.create_task(stop.wait())
            closed = asyncio.create_task(reader.read())
            done, _ = await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                held[kind].append(time.monotonic() - opened)
            for task in (stopped, closed):
                task.cancel()
        except (OSError, ssl.SSLError):
            held[kind].append(time.monotonic() - opened)
        finally:
            open_now[kind] -= 1
            writer.close()


async def _slow(served: Served, connections: int, seconds: float) -> dict[str, Any]:
    context = served.context()
    held: dict[str, list[float]] = {kind: [] for kind in KINDS}
    open_now: Counter[str] = Counter()
    stop = asyncio.Event()
    attackers = [
        asyncio.create_task(_slow_connection(served, KINDS[n % len(KINDS)], context, held, stop, open_now))
        for n in range(connections)
    ]
    ramp = time.monotonic()
    while sum(open_now.values()) < connections * 0.95 and time.monotonic() - ramp < 30:
        await asyncio.sleep(0.1)
    ramped = time.monotonic() - ramp
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[int] = []
    deadline = time.monotonic() + seconds
    number = 0
    async with httpx.AsyncClient(verify=context, timeout=HANG, base_url=served.url) as client:
        while time.monotonic() < deadline:
            samples.append(sum(open_now.values()))
            started = time.monotonic()
            try:
                response = await client.post("/mutate", json=genuine_review(f"genuine-{number}"))
                statuses[str(response.status_code)] += 1
                latencies.append(time.monotonic() - started)
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1
            number += 1
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*attackers, return_exceptions=True)
    return {"held": held, "latencies": latencies, "statuses": statuses, "open": samples, "ramp": ramped}


def slow(connections: int, seconds: float) -> bool:
    with serve_dev() as served:
        result = asyncio.run(_slow(served, connections, seconds))
    lat, statuses, samples = result["latencies"], result["statuses"], result["open"]
    print(f"slow: {connections:,} half-sent connections kept open (reopened as they are closed; "
          f"{result['ramp']:.1f} s to open them), genuine reviews for {seconds:g} s")
    print(f"  open half-sent connections while measuring: mean {sum(samples) / max(1, len(samples)):,.0f}, "
          f"min {min(samples, default=0):,}")
    print("  genuine reviews: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
          + f"; latency p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms, "
          f"max {max(lat, default=float('nan')) * 1000:.0f} ms")
    for kind, times in result["held"].items():
        print(f"  {kind:<13} closed by the server: {len(times):,}, held p50 {percentile(times, 50):.1f} s, "
              f"max {max(times, default=float('nan')):.1f} s")
    return set(statuses) == {"200"} and max(lat, default=HANG) < HANG


# -- large ---------------------------------------------------------------------------------------
def large_pod_review(uid: str, containers: int) -> bytes:
    review = genuine_review(uid)
    review["request"]["object"]["spec"]["containers"] = [
        {"name": f"c{n}", "image": "r/a:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}} for n in range(containers)
    ]
    return json.dumps(review).encode()


async def _large(served: Served, pods: int, containers: int) -> dict[str, Any]:
    context = served.context()
    bodies = [large_pod_review(f"large-{n}", containers) for n in range(pods)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    done = asyncio.Event()

    async def small() -> None:
        async with httpx.AsyncClient(verify=context, timeout=HANG, base_url=served.url) as client:
            number = 0
            while not done.is_set():
                started = time.monotonic()
                response = await client.post("/mutate", json=genuine_review(f"small-{number}"))
                statuses[response.status_code] += 1
                latencies.append(time.monotonic() - started)
                number += 1
                await asyncio.sleep(0.02)

    async def one(body: bytes) -> tuple[int, float, str]:
        async with httpx.AsyncClient(verify=context, timeout=60, base_url=served.url) as client:
            started = time.monotonic()
            response = await client.post("/mutate", content=body, headers={"content-type": "application/json"})
            answer = response.json().get("response", {}).get("status", {}).get("message", "")
            return response.status_code, time.monotonic() - started, answer

    measuring = asyncio.create_task(small())
    await asyncio.sleep(1.0)
    baseline = list(latencies)
    large = await asyncio.gather(*(one(body) for body in bodies))
    await asyncio.sleep(0.5)
    done.set()
    await measuring
    return {"large": large, "latencies": latencies, "baseline": baseline, "statuses": statuses, "size": len(bodies[0])}


def large(pods: int, containers: int, bound: int | None) -> bool:
    env = {"DRA_BRIDGE_MAX_POD_CONTAINERS": str(bound)} if bound is not None else {}
    with serve_dev(**env) as served:
        result = asyncio.run(_large(served, pods, containers))
    lat, baseline = result["latencies"], result["baseline"]
    print(f"large: {pods} Pods of {containers:,} containers with legacy GPU requests ({result['size'] / 2**20:.1f} MiB each), "
          "at once, while small reviews are sent every 20 ms")
    for status, seconds, message in result["large"]:
        print(f"  large Pod: HTTP {status} in {seconds:.2f} s: {message[:110]}")
    print(f"  small reviews: {dict(result['statuses'])}; latency before p50 {percentile(baseline, 50) * 1000:.0f} ms; "
          f"throughout p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms, "
          f"max {max(lat, default=float('nan')) * 1000:.0f} ms")
    return set(result["statuses"]) == {200} and max(lat, default=HANG) < HANG


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    f = commands.add_parser("fuzz")
    f.add_argument("--cases", type=int, default=100_000)
    f.add_argument("--seed", type=int, default=14)
    f.add_argument("--workers", type=int, default=8)
    s = commands.add_parser("slow")
    s.add_argument("--connections", type=int, default=2000)
    s.add_argument("--seconds", type=float, default=20.0)
    g = commands.add_parser("large")
    g.add_argument("--pods", type=int, default=4)
    g.add_argument("--containers", type=int, default=15_000)
    g.add_argument("--bound", type=int, help="DRA_BRIDGE_MAX_POD_CONTAINERS for the server (to see the cost without it)")
    commands.add_parser("all")
    args = parser.parse_args()
    ok = True
    if args.command in ("fuzz", "all"):
        ok &= fuzz(getattr(args, "cases", 100_000), getattr(args, "seed", 14), getattr(args, "workers", 8))
    if args.command in ("slow", "all"):
        ok &= slow(getattr(args, "connections", 2000), getattr(args, "seconds", 20.0))
    if args.command in ("large", "all"):
        ok &= large(getattr(args, "pods", 4), getattr(args, "containers", 15_000), getattr(args, "bound", None))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
