"""The benchmark: dra-bridge against the ceiling, over TLS, under vegeta.

    .venv/bin/python bench/run.py [--quick] [--out bench/results/latest.json]

Starts the ceiling (bench/ceiling.py) once and dra-bridge (bench/server.py: the real app from
``webhook.serving.server.build_runtime`` under ``uvicorn_server``, in-memory cluster seeded per workload)
once per cluster shape, the servers on CPU 0 and vegeta on CPU 1 (``taskset``). For each workload:
a short warm-up, constant-rate attacks (open model) at each rate, and saturation attacks at each
worker count (the best counts). Prints a table and the targets (PASS/MISS with the margin) and
writes everything to JSON. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workload  # noqa: E402
from bench.vegeta import Attack, Expect, ensure_vegeta, run_attack, summarize  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1
MIB = 1024 * 1024


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    rates: tuple[int, ...]
    duration: float  # each constant-rate attack
    saturation_duration: float
    warmup: float
    workers: tuple[int, ...]  # saturation: requests in flight
    claims: tuple[int, ...]  # cluster shapes for quota validation; the largest is the "with claims" figure
    tenants: int
    rules: tuple[int, ...]  # CEL rule counts; 0 is the plain quota run at the fewest claims
    rule_tenants: int  # tenants carrying the rules, and receiving the rules workloads' claims
    ready_timeout: float
    request_timeout: float  # vegeta's per-request timeout: a request slower than this is a failure
    saturation_cap_rps: int  # distinct claims generated per saturation second
    python: str  # interpreter for the servers
    out: Path
    keep_work: bool
    only: tuple[str, ...] = ()  # run just these workloads (and the servers they need)
    devices: int = 0  # published GPUs for the inventory run (beside the most claims); 0: no such run
    device_shapes: int = 100
    targets: dict[str, float] = field(default_factory=dict)
    paired_rounds: int = 0  # saturation of a workload and its ceiling, alternating (Runner.paired)
    paired_duration: float = 10.0


TARGETS = {
    "mutate_throughput_vs_ceiling_min": 0.75,
    "mutate_p99_ms_at_high_rate_max": 10.0,
    "quota_p99_ratio_max": 1.10,
    "rss_with_claims_mib_max": 160.0,
    "ready_with_claims_seconds_max": 15.0,
    "inventory_p99_ratio_max": 1.10,
    "ready_with_inventory_seconds_max": 15.0,
}


def parse_config(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short attacks, one worker count (~2 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--rates", help="constant rates, req/s (default 200,500)")
    parser.add_argument("--duration", type=float, help="seconds per constant-rate attack (default 20, quick 2)")
    parser.add_argument("--saturation-duration", type=float, help="seconds per saturation attack (default 20, quick 2)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up per workload, not counted (default 2, quick 0.5)"
    )
    parser.add_argument("--workers", help="saturation worker counts (default 32,64; quick 32)")
    parser.add_argument("--claims", help="existing claims per quota run (default 0,10000,100000; quick 0,100000)")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument(
        "--devices",
        type=int,
        default=10_000,
        help="published GPUs of the inventory run, beside the most claims (default 10,000; 0: no inventory run)",
    )
    parser.add_argument("--device-shapes", type=int, default=100, help="distinct shapes among them (default 100)")
    parser.add_argument("--rules", help="CEL rule counts (default 0,5,20)")
    parser.add_argument("--rule-tenants", type=int, default=10, help="tenants carrying the rules (default 10)")
    parser.add_argument("--ready-timeout", type=float, help="seconds to wait for /readyz (default 900, quick 45)")
    parser.add_argument(
        "--timeout", type=float, help="per-request timeout, seconds (default 10 as the apiserver's, quick 5)"
    )
    parser.add_argument("--saturation-cap", type=int, default=2000, help="distinct claims per saturation second")
    parser.add_argument("--python", default=sys.executable, help="interpreter running the servers")
    parser.add_argument("--keep-work", action="store_true", help="keep targets, results and logs (path printed)")
    parser.add_argument(
        "--only", help="comma-separated workloads to run (for A/B experiments); figures of the others are null"
    )
    parser.add_argument(
        "--paired-rounds",
        type=int,
        help="rounds of mutate_small and its ceiling at saturation, alternating (default 4, quick 1; 0: none)",
    )
    parser.add_argument("--paired-duration", type=float, help="seconds per paired attack (default 10, quick 2)")
    args = parser.parse_args(argv)
    quick = args.quick

    def ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",")) if text else default

    config = Config(
        quick=quick,
        rates=ints(args.rates, (200, 500)),
        duration=args.duration or (2.0 if quick else 20.0),
        saturation_duration=args.saturation_duration or (2.0 if quick else 20.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 2.0),
        workers=ints(args.workers, (32,) if quick else (32, 64)),
        claims=tuple(sorted(set(ints(args.claims, (0, 100_000) if quick else (0, 10_000, 100_000))))),
        tenants=args.tenants,
        rules=tuple(sorted(set(ints(args.rules, (0, 5, 20))) | {0})),
        rule_tenants=min(args.rule_tenants, args.tenants),
        ready_timeout=args.ready_timeout or (45.0 if quick else 900.0),
        request_timeout=args.timeout or (5.0 if quick else 10.0),
        saturation_cap_rps=args.saturation_cap,
        python=args.python,
        out=args.out,
        keep_work=args.keep_work,
        only=tuple(args.only.split(",")) if args.only else (),
        devices=args.devices,
        device_shapes=args.device_shapes,
        targets=dict(TARGETS),
        paired_rounds=args.paired_rounds if args.paired_rounds is not None else (1 if quick else 4),
        paired_duration=args.paired_duration or (2.0 if quick else 10.0),
    )
    if max(config.rules) > len(workload.TRUE_RULES):
        parser.error(f"at most {len(workload.TRUE_RULES)} rules")
    return config


# -- the machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def server_stack(python: str) -> dict[str, Any]:
    """What the server interpreter has: uvicorn picks uvloop/httptools when importable ("auto")."""
    probe = (
        "import importlib.util as u, importlib.metadata as m, json, platform\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "names = ['uvicorn','httptools','uvloop','h11','fastapi','starlette','pydantic','anyio','orjson','cel-python']\n"
        "out = {n: v(n) for n in names}\n"
        "out['python'] = platform.python_version()\n"
        "import inspect, ssl, webhook.serving.server as w\n"
        "src = inspect.getsource(w)\n"
        "out['uvicorn_http'] = 'httptools' if 'http=\"httptools\"' in src else ('httptools (auto)' if u.find_spec('httptools') else 'h11')\n"
        "out['uvicorn_loop'] = 'uvloop' if ('_use_uvloop' in src and u.find_spec('uvloop')) else 'asyncio'\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    stack: dict[str, Any] = json.loads(proc.stdout)
    return stack


def machine(config: Config, vegeta_version: str, pinned: bool) -> dict[str, Any]:
    stack = server_stack(config.python)
    return {
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": stack.pop("python"),
        "server_stack": stack,
        "vegeta": vegeta_version,
        "pinning": (
            f"servers on CPU {SERVER_CPU}, vegeta and this harness on CPU {LOAD_CPU} (taskset)"
            if pinned
            else "none: fewer than 2 CPUs or no taskset; servers and vegeta share the CPUs"
        ),
        "loadavg_start": loadavg(),
    }


class CpuClock:
    """CPU seconds of one process (all its threads) and of each CPU, from /proc."""

    TICK = os.sysconf("SC_CLK_TCK")

    @classmethod
    def process(cls, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / cls.TICK  # utime + stime

    @classmethod
    def cpus(cls) -> dict[int, float]:
        busy: dict[int, float] = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values]
                busy[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / cls.TICK  # not idle/iowait
        return busy


def memory(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    return out


# -- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    spec: dict[str, Any]
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    ready_seconds: float | None = None
    url: str = ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: uvicorn drains, then exits
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    name: str,
    spec: dict[str, Any],
    *,
    python: str,
    certs: Path,
    work: Path,
    cpu_prefix: list[str],
    extra_args: tuple[str, ...] = (),
) -> Server:
    port = free_port()
    log = work / f"server-{name}.log"
    command = [
        *cpu_prefix,
        python,
        str(ROOT / "bench" / "server.py"),
        "--port",
        str(port),
        "--cert-dir",
        str(certs),
        "--spec",
        json.dumps({**spec, **({"audit_file": str(work / f"audit-{name}.log")} if spec["app"] != "ceiling" else {})}),
        *extra_args,
    ]
    with log.open("wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=work)
    return Server(
        name=name, spec=spec, port=port, process=process, log=log, started=started, url=f"https://127.0.0.1:{port}"
    )


def launch(name: str, spec: dict[str, Any], *, ca: Path, timeout: float, **options: Any) -> tuple[Server, bool]:
    """``start_server`` then ``wait_ready``, again on a new port when the picked one was taken
    meanwhile (a server binds only once seeded, so the window is wide on a busy machine)."""
    for attempt in range(3):
        server = start_server(name, spec, **options)
        try:
            return server, wait_ready(server, ca=ca, timeout=timeout)
        except RuntimeError as err:
            server.stop()
            if "address already in use" not in str(err) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def wait_ready(server: Server, *, ca: Path, timeout: float) -> bool:
    """Poll /readyz until it answers 200; the time from process start is the server's time to Ready."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = server.started + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server {server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                server.ready_seconds = round(time.monotonic() - server.started, 3)
                return True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.05)
    return False


# -- workloads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    server: str
    path: str  # /mutate or /validate
    body: str  # small, large, no-gpu, claims (distinct per request), claims-rules
    expect: Expect
    ceiling: str | None = None  # the ceiling workload with the same (or, noted, a similar) body
    note: str = ""
    secondary: bool = False  # --quick runs only its saturation attacks
    paired: bool = False  # also measured in rounds alternating with its ceiling (a fixed Pod body)
    # p99 at the first rate compared with this workload's, in rounds alternating between the two
    # servers (both alive): Runner.paired_p99
    compare_p99_with: str | None = None


INVENTORY_WORKLOAD = "validate_inventory"
# dra-bridge's default quota reservation TTL (Settings.quota_reservation_ttl_seconds), which the
# servers run with unless their spec sets ``reservation_ttl``
RESERVATION_TTL = 30.0


def inventory_server(config: Config) -> str:
    return f"inventory-{config.devices}"


def plan(config: Config) -> tuple[dict[str, dict[str, Any]], list[Workload]]:
    """Servers (name -> spec) and the workloads, in the order they run."""
    fewest = config.claims[0]
    base = f"claims-{fewest}"
    servers: dict[str, dict[str, Any]] = {"ceiling": {"app": "ceiling"}}
    for n in config.claims:
        servers[f"claims-{n}"] = {"app": "dra-bridge", "claims": n, "tenants": config.tenants, "rules": 0}
    most = config.claims[-1]
    if config.devices:  # right after the same claims without an inventory: the two are compared
        servers[inventory_server(config)] = {
            **servers[f"claims-{most}"],
            "devices": config.devices,
            "device_shapes": config.device_shapes,
        }
    for r in config.rules:
        if r:
            servers[f"rules-{r}"] = {
                "app": "dra-bridge",
                "claims": fewest,
                "tenants": config.tenants,
                "rules": r,
                "rule_tenants": config.rule_tenants,
            }
    workloads = [
        Workload("ceiling_small", "ceiling", "/mutate", "small", "allowed"),
        Workload("ceiling_large", "ceiling", "/mutate", "large", "allowed", secondary=True),
        Workload("ceiling_claim", "ceiling", "/validate", "claims", "allowed", secondary=True),
        Workload("mutate_small", base, "/mutate", "small", "patched", ceiling="ceiling_small", paired=True),
        Workload("mutate_large", base, "/mutate", "large", "patched", ceiling="ceiling_large"),
        Workload(
            "mutate_no_gpu",
            base,
            "/mutate",
            "no-gpu",
            "not-patched",
            ceiling="ceiling_small",
            note="ceiling with the small GPU Pod's body (same shape and size within a few bytes)",
        ),
    ]
    for n in config.claims:
        workloads.append(
            Workload(
                f"validate_claims_{n}",
                f"claims-{n}",
                "/validate",
                "claims",
                "allowed",
                "ceiling_claim",
                compare_p99_with=f"validate_claims_{fewest}" if n == most and n != fewest else None,
            )
        )
        if config.devices and n == most:
            workloads.append(
                Workload(
                    INVENTORY_WORKLOAD,
                    inventory_server(config),
                    "/validate",
                    "claims",
                    "allowed",
                    "ceiling_claim",
                    note=f"{most:,} claims and {config.devices:,} published GPUs in {config.device_shapes} shapes",
                    compare_p99_with=f"validate_claims_{most}",
                )
            )
    for r in config.rules:
        if r:
            workloads.append(
                Workload(f"validate_rules_{r}", f"rules-{r}", "/validate", "claims-rules", "allowed", "ceiling_claim")
            )
    return servers, workloads


class Targets:
    """vegeta target files: one line for the fixed Pod bodies (vegeta cycles through it), a distinct
    claim per request for validation (so every admission is a new reservation)."""

    def __init__(self, work: Path, config: Config) -> None:
        self.work, self.config = work, config
        self._cache: dict[tuple[str, str, str], Path] = {}
        self._made = 0

    def for_attack(self, body: str, url: str, attack: str, count: int) -> Path:
        key = (body, url, attack if body.startswith("claims") else "")
        if key in self._cache:
            return self._cache[key]
        self._made += 1
        path = self.work / f"targets-{body}-{self._made}.jsonl"
        with path.open("w") as out:
            if body.startswith("claims"):
                tenants = self.config.rule_tenants if body == "claims-rules" else self.config.tenants
                for i in range(count):
                    review = workload.claim_review(i, tenants=tenants, run=attack)
                    out.write(workload.vegeta_target(url, workload.encode(review)) + "\n")
            else:
                out.write(workload.vegeta_target(url, workload.encode(self.pod_review(body))) + "\n")
        self._cache[key] = path
        return path

    def discard(self, path: Path) -> None:
        for key in [k for k, v in self._cache.items() if v == path]:
            del self._cache[key]
        path.unlink(missing_ok=True)

    @staticmethod
    def pod_review(body: str) -> dict[str, Any]:
        make = {"small": workload.small_gpu_pod, "large": workload.large_pod, "no-gpu": workload.no_gpu_pod}[body]
        return workload.pod_review(make())

    def body_bytes(self, body: str) -> int:
        if body.startswith("claims"):
            return len(workload.encode(workload.claim_review(0, tenants=self.config.tenants, run="size")))
        return len(workload.encode(self.pod_review(body)))


@dataclass
class Runner:
    config: Config
    vegeta: Path
    ca: Path
    work: Path
    load_prefix: list[str]
    targets: Targets
    progress: Callable[[str], None]
    ceiling: Server | None = None  # alive through the run: the paired rounds attack it again
    # servers whose workloads a later one compares its p99 with: kept alive until the end
    kept: dict[str, Server] = field(default_factory=dict)
    workloads: list[Workload] = field(default_factory=list)  # of this run

    def attacks(self, w: Workload) -> Iterator[tuple[str, Attack, bool]]:
        """(key, attack, counted) for one workload: warm-up, each rate, each saturation count."""
        c = self.config
        warm_rate = min(100, min(c.rates))
        yield "warmup", Attack(f"{w.name}-warmup", Path(), warm_rate, c.warmup), False
        if c.quick and w.secondary:
            rates: tuple[int, ...] = ()
        else:
            rates = c.rates
        for rate in rates:
            yield f"rate_{rate}", Attack(f"{w.name}-rate-{rate}", Path(), rate, c.duration), True
        for n in c.workers:
            yield f"saturation_{n}", Attack(f"{w.name}-sat-{n}", Path(), 0, c.saturation_duration, n), True

    def run_workload(self, w: Workload, server: Server) -> dict[str, Any]:
        c = self.config
        url = server.url + w.path
        out: dict[str, Any] = {
            "server": w.server,
            "endpoint": w.path,
            "body": w.body,
            "body_bytes": self.targets.body_bytes(w.body),
            "expect": w.expect,
            "ceiling": w.ceiling,
            "attacks": {},
        }
        if w.note:
            out["note"] = w.note
        for key, attack, counted in self.attacks(w):
            rate_for_targets = attack.rate or c.saturation_cap_rps
            needed = int(rate_for_targets * attack.duration * 1.05) + 10
            targets = self.targets.for_attack(w.body, url, f"{w.server}-{key}", needed)
            attack = Attack(attack.name, targets, attack.rate, attack.duration, attack.workers, c.request_timeout)
            self.progress(f"  {w.name:<22} {key:<15} ...")
            figures = self.measure(attack, server, w.expect)
            if w.body.startswith("claims"):
                if figures["requests"] > needed:
                    figures["targets_reused"] = True  # vegeta cycled: some claims were sent twice
                self.targets.discard(targets)  # names are per server and attack: never sent again
            if counted:
                out["attacks"][key] = figures
            else:
                out["warmup"] = {k: figures[k] for k in ("requests", "success_ratio", "failures")}
            lat = figures["latency_ms"]
            self.progress(
                f"\r  {w.name:<22} {key:<15} {figures['requests']:>7} req  ok {figures['success_ratio']:.4f}  "
                f"{figures['throughput_rps'] or 0:>8.1f}/s  p50 {lat['p50']}  p99 {lat['p99']}  p99.9 {lat['p999']} ms\n"
            )
        if w.paired and self.ceiling is not None and c.paired_rounds > 0:
            out["paired"] = self.paired(w, server, self.ceiling)
        if w.compare_p99_with and c.paired_rounds > 0:
            other = next((o for o in self.workloads if o.name == w.compare_p99_with), None)
            if other is not None and other.server in self.kept:
                out["paired_p99"] = self.paired_p99(w, server, other, self.kept[other.server])
        return out

    def paired_p99(self, w: Workload, server: Server, other: Workload, other_server: Server) -> dict[str, Any]:
        """``w`` and ``other`` at the first fixed rate in alternating rounds (``other`` first in even
        rounds), both servers alive, the ratio of their p99 per round and its median over rounds.

        The p99 of a validation near a millisecond moves with the machine by more than the 10 % the
        quota targets allow: measured on servers run minutes apart, the same comparison gave 0.88 and
        1.80 in two runs of the same code.

        ``w``'s own last attack saturated its server, and every claim it admitted holds a
        reservation for the TTL (no watch ever shows the claim): ~100,000 live objects whose
        garbage-collector passes paused that server for 130-250 ms in the first round when it
        started right after. So the rounds start once the TTL has passed, and both servers first get
        an unrecorded warm-up at the rate (the compared one has sat idle for minutes; its first
        seconds gave a p99 of 298 ms).
        """
        c = self.config
        rate = c.rates[0]
        ttl = float(server.spec.get("reservation_ttl") or RESERVATION_TTL)
        self.progress(f"  {w.name:<22} p99 rounds after the reservations' TTL ({ttl:g} s) ...\n")
        time.sleep(ttl + 2.0)
        for wl, target in ((other, other_server), (w, server)):
            warm = self.attack_once(
                f"{w.name}-p99-warmup-{wl.name}", wl, target, rate, c.warmup, key=f"{wl.server}-p99-warmup"
            )
            self.progress(f"  {w.name:<22} p99 warm-up {wl.name:<22} p99 {warm['latency_ms']['p99']} ms\n")
        rounds: list[dict[str, Any]] = []
        for n in range(c.paired_rounds):
            sides: list[tuple[str, Workload, Server]] = [("other", other, other_server), ("workload", w, server)]
            if n % 2:
                sides.reverse()
            got: dict[str, dict[str, Any]] = {}
            for side, wl, target in sides:
                self.progress(f"  {w.name:<22} p99 round {n} {wl.name:<22} ...")
                got[side] = self.attack_once(
                    f"{w.name}-p99-{n}-{side}", wl, target, rate, c.paired_duration, key=f"{wl.server}-p99-{n}"
                )
                lat = got[side]["latency_ms"]
                self.progress(f"\r  {w.name:<22} p99 round {n} {wl.name:<22} p50 {lat['p50']}  p99 {lat['p99']} ms\n")
            rounds.append(
                {
                    "order": [wl.name for _, wl, _ in sides],
                    "p99_ms": got["workload"]["latency_ms"]["p99"],
                    "p99_ms_other": got["other"]["latency_ms"]["p99"],
                    "ratio": ratio(got["workload"]["latency_ms"]["p99"], got["other"]["latency_ms"]["p99"]),
                    **round_health(got),
                }
            )
        return {
            "compared_with": other.name,
            "rate": rate,
            "duration_s": c.paired_duration,
            "rounds": rounds,
            "median_ratio": median([r["ratio"] for r in rounds]),
        }

    def attack_once(
        self, name: str, wl: Workload, target: Server, rate: int, duration: float, *, key: str
    ) -> dict[str, Any]:
        """One attack of ``wl``'s body at ``rate`` on ``target``, outside its own sequence; distinct
        claims (``key`` names them) are never sent again."""
        needed = int(rate * duration * 1.05) + 10
        targets = self.targets.for_attack(wl.body, target.url + wl.path, key, needed)
        figures = self.measure(
            Attack(name, targets, rate, duration, None, self.config.request_timeout), target, wl.expect
        )
        if wl.body.startswith("claims"):
            self.targets.discard(targets)
        return figures

    def paired(self, w: Workload, server: Server, ceiling: Server) -> dict[str, Any]:
        """``w`` and its ceiling at saturation in alternating rounds (the ceiling first in even
        rounds, ``w`` first in odd ones), the ratio taken per round and its median over rounds.

        The machine's own speed drifts by a tenth over minutes (the ceiling's capacity moved from
        8,148 to 9,142 small Pods per second between runs an hour apart, and within one run), and
        the sequential attacks measure the ceiling minutes before the workload: two attacks seconds
        apart, in both orders, see less of the drift.
        """
        c = self.config
        assert not w.body.startswith("claims"), "paired rounds send one fixed body"
        workers = c.workers[0]
        rounds: list[dict[str, Any]] = []
        for n in range(c.paired_rounds):
            sides: list[tuple[str, Server, Expect]] = [("ceiling", ceiling, "allowed"), ("workload", server, w.expect)]
            if n % 2:
                sides.reverse()
            got: dict[str, dict[str, Any]] = {}
            for side, target, expect in sides:
                targets = self.targets.for_attack(w.body, target.url + w.path, "paired", 0)
                attack = Attack(
                    f"{w.name}-paired-{n}-{side}", targets, 0, c.paired_duration, workers, c.request_timeout
                )
                self.progress(f"  {w.name:<22} paired {n} {side:<8} ...")
                got[side] = self.measure(attack, target, expect)
                self.progress(f"\r  {w.name:<22} paired {n} {side:<8} {got[side]['throughput_rps'] or 0:>8.1f}/s\n")
            rounds.append(
                {
                    "order": [side for side, _, _ in sides],
                    "ceiling_rps": got["ceiling"]["throughput_rps"],
                    "workload_rps": got["workload"]["throughput_rps"],
                    "ratio": ratio(got["workload"]["throughput_rps"], got["ceiling"]["throughput_rps"]),
                    "ceiling_cpu_ms": got["ceiling"]["server_cpu_ms_per_request"],
                    "workload_cpu_ms": got["workload"]["server_cpu_ms_per_request"],
                    "cpu_ratio": ratio(
                        got["ceiling"]["server_cpu_ms_per_request"], got["workload"]["server_cpu_ms_per_request"]
                    ),
                    **round_health(got),
                }
            )
        return {
            "workers": workers,
            "duration_s": c.paired_duration,
            "rounds": rounds,
            "median_ratio": median([r["ratio"] for r in rounds]),
            "median_cpu_ratio": median([r["cpu_ratio"] for r in rounds]),
        }

    def measure(self, attack: Attack, server: Server, expect: Expect) -> dict[str, Any]:
        results = self.work / f"results-{attack.name}.bin"  # kept with --keep-work (vegeta plot/report read it)
        cpu_before, cpus_before, wall_before = CpuClock.process(server.process.pid), CpuClock.cpus(), time.monotonic()
        run_attack(self.vegeta, attack, root_certs=self.ca, output=results, cpu_prefix=self.load_prefix)
        elapsed = time.monotonic() - wall_before
        cpu_after, cpus_after = CpuClock.process(server.process.pid), CpuClock.cpus()
        figures = summarize(self.vegeta, results, expect=expect, cpu_prefix=self.load_prefix)
        server_cpu = cpu_after - cpu_before
        figures["attack"] = {"rate": attack.rate or None, "workers": attack.workers, "duration_s": attack.duration}
        figures["server_cpu_s"] = round(server_cpu, 3)
        figures["server_cpu_ms_per_request"] = (
            round(1000 * server_cpu / figures["requests"], 3) if figures["requests"] else None
        )
        busy = {cpu: cpus_after.get(cpu, 0) - cpus_before.get(cpu, 0) for cpu in cpus_after}
        # Noise: what else ran on the server's CPU (its busy time minus the server's own CPU time).
        if SERVER_CPU in busy and self.load_prefix:
            figures["foreign_load_on_server_cpu"] = round(max(0.0, busy[SERVER_CPU] - server_cpu) / elapsed, 3)
        figures["loadavg_1m"] = loadavg()[:1]
        if not self.config.keep_work:
            results.unlink(missing_ok=True)
        figures["settle_s"] = settle(server.process.pid)
        return figures


def settle(pid: int, *, idle_share: float = 0.1, window: float = 0.25, limit: float = 180.0) -> float:
    """Wait until the server is idle (below ``idle_share`` of a CPU over ``window``): requests that
    vegeta gave up on are still queued in the server after an overloaded attack (thousands, at
    500 req/s against a capacity of 100), and would starve the next one. Returns the seconds
    waited (``limit`` if it never settled)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = CpuClock.process(pid)
        time.sleep(window)
        if CpuClock.process(pid) - before < idle_share * window:
            break
    return round(time.monotonic() - started, 2)


# -- figures and targets ----------------------------------------------------------------------------


def best_saturation(attacks: dict[str, Any]) -> tuple[str | None, float | None]:
    best: tuple[str | None, float | None] = (None, None)
    for key, figures in attacks.items():
        rps = figures.get("throughput_rps")
        if key.startswith("saturation_") and rps is not None and (best[1] is None or rps > best[1]):
            best = (key, rps)
    return best


def split_by_capacity(workloads: dict[str, Any]) -> tuple[list[float], list[dict[str, Any]]]:
    """Success ratios of every attack the server can carry (saturation, the closed model, and fixed
    rates up to 90 % of the workload's capacity), and the fixed-rate attacks above it: an overload on
    purpose, whose excess is shed with 503 or times out in a queue, reported apart."""
    successes: list[float] = []
    overloaded: list[dict[str, Any]] = []
    for name, data in workloads.items():
        attacks = data.get("attacks", {})
        capacity = best_saturation(attacks)[1]
        for key, attack in attacks.items():
            rate = (attack.get("attack") or {}).get("rate")
            if rate and capacity and rate > 0.9 * capacity:
                overloaded.append(
                    {
                        "workload": name,
                        "attack": key,
                        "rate": rate,
                        "capacity_rps": capacity,
                        "success_ratio": attack["success_ratio"],
                        "failures": attack.get("failures", {}),
                        "p50_ms": (attack.get("latency_ms") or {}).get("p50"),
                    }
                )
            else:
                successes.append(attack["success_ratio"])
    return successes, overloaded


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def round_health(got: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Of one paired round's attacks: the lowest success ratio, and the most foreign load on the
    server's CPU (None where it was not measured)."""
    return {
        "success_ratio_min": min(g["success_ratio"] for g in got.values()),
        "foreign_load_on_server_cpu": max(
            (g["foreign_load_on_server_cpu"] for g in got.values() if "foreign_load_on_server_cpu" in g),
            default=None,
        ),
    }


def median(values: list[float | None]) -> float | None:
    """The median of the values measured (None if none was)."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else round((known[middle - 1] + known[middle]) / 2, 3)


def figures_of(config: Config, results: dict[str, Any]) -> dict[str, Any]:
    w, servers = results["workloads"], results["servers"]
    high = max(config.rates)
    fewest, most = config.claims[0], config.claims[-1]
    figures: dict[str, Any] = {
        "throughput_rps": {},
        "throughput_vs_ceiling": {},
        "latency_ms": {},
        "p99_vs_ceiling": {},
        # Server CPU time per request at saturation: what contention from other processes on the
        # server's CPU distorts least (req/s and latency suffer from it, CPU time per request much less).
        "cpu_ms_per_request": {},
        "cpu_capacity_vs_ceiling": {},
        # Runner.paired: the workload and its ceiling in alternating rounds, the median of each
        # round's ratio (throughput; server CPU per request)
        "paired_vs_ceiling": {},
    }
    for name, data in w.items():
        key, rps = best_saturation(data.get("attacks", {}))
        figures["throughput_rps"][name] = {"rps": rps, "at": key}
        figures["cpu_ms_per_request"][name] = data["attacks"][key].get("server_cpu_ms_per_request") if key else None
        for rate in config.rates:
            attack = data.get("attacks", {}).get(f"rate_{rate}")
            lat = attack["latency_ms"] if attack else {}
            figures["latency_ms"].setdefault(name, {})[str(rate)] = {q: lat.get(q) for q in ("p50", "p99", "p999")}
    for name, data in w.items():
        paired = data.get("paired")
        if paired:
            figures["paired_vs_ceiling"][name] = {
                "median_ratio": paired["median_ratio"],
                "median_cpu_ratio": paired["median_cpu_ratio"],
                "ratios": [r["ratio"] for r in paired["rounds"]],
            }
    for name, data in w.items():
        ceiling = data.get("ceiling")
        if not ceiling or ceiling not in w:
            continue
        figures["throughput_vs_ceiling"][name] = ratio(
            figures["throughput_rps"][name]["rps"], figures["throughput_rps"][ceiling]["rps"]
        )
        figures["cpu_capacity_vs_ceiling"][name] = ratio(
            figures["cpu_ms_per_request"][ceiling], figures["cpu_ms_per_request"][name]
        )
        figures["p99_vs_ceiling"][name] = {
            str(rate): ratio(
                figures["latency_ms"][name][str(rate)]["p99"], figures["latency_ms"][ceiling][str(rate)]["p99"]
            )
            for rate in config.rates
        }
    quota = {
        str(n): figures["latency_ms"].get(f"validate_claims_{n}", {}).get(str(config.rates[0]), {}).get("p99")
        for n in config.claims
    }
    rules = {
        str(r): figures["latency_ms"]
        .get(f"validate_rules_{r}" if r else f"validate_claims_{fewest}", {})
        .get(str(config.rates[0]), {})
        .get("p99")
        for r in config.rules
    }
    base_server, big_server = servers.get(f"claims-{fewest}", {}), servers.get(f"claims-{most}", {})

    def paired_p99(name: str) -> dict[str, Any] | None:
        pair = w.get(name, {}).get("paired_p99")
        if not pair:
            return None
        return {
            "median_ratio": pair["median_ratio"],
            "ratios": [r["ratio"] for r in pair["rounds"]],
            "p99_ms": [r["p99_ms"] for r in pair["rounds"]],
            "p99_ms_other": [r["p99_ms_other"] for r in pair["rounds"]],
        }

    figures["quota"] = {
        "rate": config.rates[0],
        "p99_ms_by_claims": quota,
        "p99_ratio_most_vs_fewest": ratio(quota[str(most)], quota[str(fewest)]),
        # Runner.paired_p99: the two servers alive, alternating rounds, the median of the rounds' ratios
        "paired": paired_p99(f"validate_claims_{most}"),
    }
    figures["rules"] = {"rate": config.rates[0], "p99_ms_by_rules": rules, "rule_tenants": config.rule_tenants}
    figures["rss_mib"] = {
        "idle": base_server.get("rss_ready_mib"),
        "with_claims": big_server.get("rss_ready_mib"),
        "with_claims_after_load": big_server.get("rss_after_load_mib"),
        "claims": most,
    }
    figures["ready_seconds"] = {
        "idle": base_server.get("ready_seconds"),
        "with_claims": big_server.get("ready_seconds"),
        "claims": most,
    }
    inventory_ready = servers.get(inventory_server(config), {}).get("ready_seconds") if config.devices else None
    with_inventory = figures["latency_ms"].get(INVENTORY_WORKLOAD, {}).get(str(config.rates[0]), {}).get("p99")
    figures["inventory"] = {
        "devices": config.devices,
        "shapes": config.device_shapes,
        "claims": most,
        "rate": config.rates[0],
        "p99_ms": with_inventory,
        "p99_ms_without": quota[str(most)],
        "p99_ratio": ratio(with_inventory, quota[str(most)]),
        "ready_seconds": inventory_ready,
        "ready_seconds_without": big_server.get("ready_seconds"),
        "rss_ready_mib": servers.get(inventory_server(config), {}).get("rss_ready_mib") if config.devices else None,
        "paired": paired_p99(INVENTORY_WORKLOAD) if config.devices else None,
    }
    successes, overloaded = split_by_capacity(w)
    successes += [
        r["success_ratio_min"]
        for d in w.values()
        for key in ("paired", "paired_p99")
        for r in (d.get(key) or {}).get("rounds", [])
    ]
    figures["success_ratio_min"] = min(successes) if successes else None
    figures["overloaded"] = overloaded
    foreign = [
        a["foreign_load_on_server_cpu"]
        for d in w.values()
        for a in [
            *d.get("attacks", {}).values(),
            *(d.get("paired") or {}).get("rounds", []),
            *(d.get("paired_p99") or {}).get("rounds", []),
        ]
        if a.get("foreign_load_on_server_cpu") is not None
    ]
    figures["noise"] = {
        "foreign_load_on_server_cpu_mean": round(sum(foreign) / len(foreign), 3) if foreign else None,
        "foreign_load_on_server_cpu_max": max(foreign) if foreign else None,
    }
    figures["high_rate"] = high
    return figures


def targets_of(config: Config, figures: dict[str, Any]) -> list[dict[str, Any]]:
    t = config.targets
    high, most, fewest = figures["high_rate"], figures["rss_mib"]["claims"], config.claims[0]
    paired = figures.get("paired_vs_ceiling", {}).get("mutate_small") or {}
    cpu_ratio = figures["cpu_capacity_vs_ceiling"].get("mutate_small")
    if paired.get("median_ratio"):
        mutate_note = (
            f" (rounds: {', '.join(f'{r}x' for r in paired['ratios'])}; by server CPU per request, median "
            f"{paired['median_cpu_ratio']}x; the sequential attacks minutes apart: "
            f"{figures['throughput_vs_ceiling'].get('mutate_small')}x, by CPU {cpu_ratio}x)"
        )
    elif cpu_ratio is not None:  # the same target read from CPU time per request, which noise distorts least
        mutate_note = f" (by server CPU per request: {cpu_ratio}x)"
    else:
        mutate_note = ""

    def p99_pair(pair: dict[str, Any] | None, sequential: float | None) -> tuple[str, float | None, str]:
        """(name suffix, value, detail note) of a p99 comparison: the paired rounds' median where
        they ran, else the ratio of the attacks minutes apart."""
        if not pair:
            return "", sequential, ""
        rounds = ", ".join(f"{r}x" for r in pair["ratios"])
        note = f" (rounds: {rounds}; the attacks minutes apart: {sequential}x)"
        return " (paired rounds, median)", pair["median_ratio"], note

    quota_suffix, quota_value, quota_note = p99_pair(
        figures["quota"].get("paired"), figures["quota"]["p99_ratio_most_vs_fewest"]
    )
    checks = [
        (
            "mutate throughput >= 75% of the ceiling"
            + (" (paired rounds, median)" if paired.get("median_ratio") else ""),
            paired.get("median_ratio") or figures["throughput_vs_ceiling"].get("mutate_small"),
            t["mutate_throughput_vs_ceiling_min"],
            ">=",
            "x",
            mutate_note,
        ),
        (
            f"mutate p99 at {high} req/s <= 10 ms",
            figures["latency_ms"].get("mutate_small", {}).get(str(high), {}).get("p99"),
            t["mutate_p99_ms_at_high_rate_max"],
            "<=",
            " ms",
            "",
        ),
        (
            f"quota p99 with {most:,} claims within 10% of {fewest:,} (at {config.rates[0]} req/s)" + quota_suffix,
            quota_value,
            t["quota_p99_ratio_max"],
            "<=",
            "x",
            quota_note,
        ),
        (
            f"RSS with {most:,} claims <= 160 MiB",
            figures["rss_mib"]["with_claims"],
            t["rss_with_claims_mib_max"],
            "<=",
            " MiB",
            "",
        ),
        (
            f"Ready within 15 s with {most:,} claims",
            figures["ready_seconds"]["with_claims"],
            t["ready_with_claims_seconds_max"],
            "<=",
            " s",
            "",
        ),
        (
            "every request within capacity succeeded (success ratio 1.0)",
            figures["success_ratio_min"],
            1.0,
            ">=",
            "",
            "",
        ),
    ]
    if config.devices:
        inv = figures["inventory"]
        suffix, value, note = p99_pair(inv["paired"], inv["p99_ratio"])
        checks += [
            (
                f"claim validation p99 with {config.devices:,} devices within 10% of none "
                f"({most:,} claims, at {config.rates[0]} req/s)" + suffix,
                value,
                t["inventory_p99_ratio_max"],
                "<=",
                "x",
                note,
            ),
            (
                f"Ready within 15 s with {config.devices:,} devices and {most:,} claims",
                inv["ready_seconds"],
                t["ready_with_inventory_seconds_max"],
                "<=",
                " s",
                "",
            ),
        ]
    out: list[dict[str, Any]] = []
    for name, value, limit, op, unit, note in checks:
        if value is None:
            out.append(
                {
                    "target": name,
                    "value": None,
                    "limit": limit,
                    "pass": False,
                    "margin": None,
                    "detail": "not measured" + note,
                }
            )
            continue
        passed = value >= limit if op == ">=" else value <= limit
        margin = value - limit if op == ">=" else limit - value  # positive: room left; negative: missed by
        out.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "pass": passed,
                "margin": round(margin, 3),
                "detail": f"{value}{unit} vs {op} {limit}{unit}: {'room' if passed else 'missed by'} "
                f"{abs(margin):.3g}{unit}{note}",
            }
        )
    return out


def required_figures(config: Config) -> list[str]:
    """Dotted paths every result file has (values may be null only when a server never got Ready)."""
    paths = [
        "figures.noise.foreign_load_on_server_cpu_mean",
        "figures.cpu_ms_per_request.mutate_small",
        "figures.cpu_capacity_vs_ceiling.mutate_small",
        "figures.success_ratio_min",
        "figures.rss_mib.idle",
        "figures.rss_mib.with_claims",
        "figures.ready_seconds.idle",
        "figures.ready_seconds.with_claims",
        "figures.quota.p99_ratio_most_vs_fewest",
    ]
    _, workloads = plan(config)
    for w in workloads:
        paths.append(f"figures.throughput_rps.{w.name}.rps")
        for rate in config.rates:
            paths += [f"figures.latency_ms.{w.name}.{rate}.{q}" for q in ("p50", "p99", "p999")]
        if w.ceiling:
            paths.append(f"figures.throughput_vs_ceiling.{w.name}")
            paths += [f"figures.p99_vs_ceiling.{w.name}.{rate}" for rate in config.rates]
    paths += [f"figures.quota.p99_ms_by_claims.{n}" for n in config.claims]
    paths += [f"figures.rules.p99_ms_by_rules.{r}" for r in config.rules]
    if config.devices:
        paths += [f"figures.inventory.{k}" for k in ("p99_ms", "p99_ms_without", "p99_ratio", "ready_seconds")]
    if config.paired_rounds > 0:
        for w in workloads:
            if w.paired:
                paths += [f"figures.paired_vs_ceiling.{w.name}.{k}" for k in ("median_ratio", "median_cpu_ratio")]
        if len(config.claims) > 1:
            paths.append("figures.quota.paired.median_ratio")
        if config.devices:
            paths.append("figures.inventory.paired.median_ratio")
    return paths


# -- output -----------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def paired_p99_line(pair: dict[str, Any]) -> str:
    rounds = ", ".join(
        f"{fmt(a)}/{fmt(b)} ms {fmt(r)}x"
        for a, b, r in zip(pair["p99_ms"], pair["p99_ms_other"], pair["ratios"], strict=True)
    )
    return f"paired rounds, both servers alive: median {fmt(pair['median_ratio'])}x ({rounds})"


def table(config: Config, results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    stack = m["server_stack"]
    lines.append(f"dra-bridge benchmark ({'quick' if config.quick else 'full'}), {results['date']}")
    lines.append(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, uvicorn {stack['uvicorn']} "
        f"(http {stack['uvicorn_http']}, loop {stack['uvicorn_loop']}), vegeta {m['vegeta']}"
    )
    lines.append(f"pinning: {m['pinning']}")
    lines.append(
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}; "
        "'other' = share of the server CPU used by other processes during the attack"
    )
    noise = results["figures"]["noise"]["foreign_load_on_server_cpu_mean"]
    if noise is not None and noise > 0.05:
        lines.append(
            f"NOISY: other processes used {noise:.0%} of the server's CPU on average during the attacks; "
            "req/s and latencies are pessimistic, CPU ms per request is the steadier figure"
        )
    lines.append("")
    head = f"{'workload':<22} {'attack':<14} {'sent/s':>7} {'ok/s':>7} {'success':>8} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7}  {'cpu ms/req':>10} {'other':>5}"
    lines.append(head)
    lines.append("-" * len(head))
    for name, data in results["workloads"].items():
        for key, a in data.get("attacks", {}).items():
            lat = a["latency_ms"]
            lines.append(
                f"{name:<22} {key:<14} {fmt(a['sent_rps'], 0):>7} {fmt(a['throughput_rps'], 0):>7} {a['success_ratio']:>8.4f} "
                f"{fmt(lat['p50']):>7} {fmt(lat['p99']):>7} {fmt(lat['p999']):>7} {fmt(lat['max']):>7}  "
                f"{fmt(a.get('server_cpu_ms_per_request'), 3):>10} {fmt(a.get('foreign_load_on_server_cpu')):>5}"
            )
        if data.get("skipped"):
            lines.append(f"{name:<22} skipped: {data['skipped']}")
    lines.append("(latencies in ms; ok/s = successes per second; cpu ms/req = server CPU time per request)")
    f = results["figures"]
    lines.append("")
    lines.append("figures")
    for name, t in f["throughput_rps"].items():
        vs = f["throughput_vs_ceiling"].get(name)
        lines.append(
            f"  saturation {name:<22} {fmt(t['rps'], 0):>7} req/s ({t['at']})" + (f"  {vs:.2f}x ceiling" if vs else "")
        )
    for name, cpu in f["cpu_ms_per_request"].items():
        vs = f["cpu_capacity_vs_ceiling"].get(name)
        lines.append(
            f"  server CPU per request at saturation {name:<22} {fmt(cpu, 3):>6} ms"
            + (f"  (capacity {vs:.2f}x the ceiling's)" if vs else "")
        )
    for name, pair in f.get("paired_vs_ceiling", {}).items():
        lines.append(
            f"  paired with the ceiling {name:<22} median {fmt(pair['median_ratio'], 3)}x (rounds "
            + ", ".join(f"{fmt(r, 3)}x" for r in pair["ratios"])
            + f"; by CPU median {fmt(pair['median_cpu_ratio'], 3)}x)"
        )
    for name, by_rate in f["p99_vs_ceiling"].items():
        lines.append(f"  p99 vs ceiling {name:<18} " + ", ".join(f"{r} req/s {fmt(v)}x" for r, v in by_rate.items()))
    q = f["quota"]
    lines.append(
        f"  quota p99 at {q['rate']} req/s by claims: "
        + ", ".join(f"{int(k):,}: {fmt(v)} ms" for k, v in q["p99_ms_by_claims"].items())
        + f"  (ratio {fmt(q['p99_ratio_most_vs_fewest'])})"
    )
    if q.get("paired"):
        lines.append("  quota p99 " + paired_p99_line(q["paired"]))
    r = f["rules"]
    lines.append(
        f"  rules p99 at {r['rate']} req/s by CEL rules: "
        + ", ".join(f"{k}: {fmt(v)} ms" for k, v in r["p99_ms_by_rules"].items())
    )
    lines.append(
        f"  RSS idle {fmt(f['rss_mib']['idle'], 1)} MiB, with {f['rss_mib']['claims']:,} claims {fmt(f['rss_mib']['with_claims'], 1)} MiB "
        f"(after load {fmt(f['rss_mib']['with_claims_after_load'], 1)} MiB)"
    )
    lines.append(
        f"  Ready: idle {fmt(f['ready_seconds']['idle'])} s, with {f['ready_seconds']['claims']:,} claims {fmt(f['ready_seconds']['with_claims'])} s"
    )
    inv = f["inventory"]
    if inv["devices"]:
        lines.append(
            f"  inventory: {inv['devices']:,} devices in {inv['shapes']} shapes with {inv['claims']:,} claims: "
            f"claim validation p99 at {inv['rate']} req/s {fmt(inv['p99_ms'])} ms vs {fmt(inv['p99_ms_without'])} ms "
            f"without (ratio {fmt(inv['p99_ratio'])}); Ready {fmt(inv['ready_seconds'])} s vs "
            f"{fmt(inv['ready_seconds_without'])} s; RSS {fmt(inv['rss_ready_mib'], 1)} MiB"
        )
        if inv.get("paired"):
            lines.append("  inventory p99 " + paired_p99_line(inv["paired"]))
    for o in f.get("overloaded", []):
        failures = ", ".join(f"{k} {v}" for k, v in sorted(o["failures"].items())) or "none"
        lines.append(
            f"  overload {o['workload']} {o['attack']} (capacity {fmt(o['capacity_rps'], 0)} req/s): "
            f"success {o['success_ratio']:.4f}, failures: {failures}"
        )
    lines.append("")
    lines.append("targets")
    for t in results["targets"]:
        lines.append(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['detail']}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    taskset = shutil.which("taskset")
    pinned = bool(taskset) and len(os.sched_getaffinity(0)) >= 2 and {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0)
    server_prefix = [taskset, "-c", str(SERVER_CPU)] if pinned and taskset else []
    load_prefix = [taskset, "-c", str(LOAD_CPU)] if pinned and taskset else []
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})  # this harness stays off the servers' CPU too

    def progress(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    vegeta, vegeta_version = ensure_vegeta()
    results: dict[str, Any] = {
        "schema": 1,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "mode": "quick" if config.quick else "full",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": machine(config, vegeta_version, pinned),
        "servers": {},
        "workloads": {},
    }
    progress(f"{results['machine']['pinning']}\n")
    work = Path(tempfile.mkdtemp(prefix="dra-bridge-bench-"))
    from webhook.certs.files import ensure_dev_certs

    certs = ensure_dev_certs(work / "certs")
    ca = certs / "ca.crt"
    servers_plan, workloads = plan(config)
    if config.only:
        unknown = sorted(set(config.only) - {w.name for w in workloads})
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; known: {[w.name for w in workloads]}")
        workloads = [w for w in workloads if w.name in config.only]
        needed = {w.server for w in workloads} | {"ceiling"}
        servers_plan = {name: spec for name, spec in servers_plan.items() if name in needed}
    runner = Runner(config, vegeta, ca, work, load_prefix, Targets(work, config), progress, workloads=workloads)
    compared = {o.server for w in workloads if w.compare_p99_with for o in workloads if o.name == w.compare_p99_with}
    ceiling: Server | None = None
    try:
        ceiling, ceiling_ready = launch(
            "ceiling",
            servers_plan["ceiling"],
            ca=ca,
            timeout=60,
            python=config.python,
            certs=certs,
            work=work,
            cpu_prefix=server_prefix,
        )
        if not ceiling_ready:
            raise RuntimeError(f"the ceiling did not get ready:\n{ceiling.log_tail()}")
        runner.ceiling = ceiling
        record_server(results, ceiling, ready=True)
        for name in servers_plan:
            if name == "ceiling":
                server, ready = ceiling, True
            else:
                progress(f"starting {name} {json.dumps(servers_plan[name])} ...\n")
                server, ready = launch(
                    name,
                    servers_plan[name],
                    ca=ca,
                    timeout=config.ready_timeout,
                    python=config.python,
                    certs=certs,
                    work=work,
                    cpu_prefix=server_prefix,
                )
            try:
                if server is not ceiling:
                    record_server(results, server, ready=ready)
                    progress(
                        f"  {name}: ready={ready} in {server.ready_seconds} s, RSS {results['servers'][name].get('rss_ready_mib')} MiB\n"
                    )
                for w in (w for w in workloads if w.server == name):
                    if not ready:
                        results["workloads"][w.name] = {
                            "server": name,
                            "skipped": f"{name} not Ready within {config.ready_timeout:g} s",
                            "attacks": {},
                        }
                        continue
                    results["workloads"][w.name] = runner.run_workload(w, server)
                if ready and server is not ceiling:
                    results["servers"][name]["rss_after_load_mib"] = memory(server.process.pid).get("VmRSS")
                    results["servers"][name]["hwm_mib"] = memory(server.process.pid).get("VmHWM")
            finally:
                if server is not ceiling:
                    if ready and name in compared and config.paired_rounds > 0:
                        runner.kept[name] = server  # a later workload's p99 is paired with it
                    else:
                        server.stop()
                        results["servers"][name]["exit_code"] = server.process.returncode
    finally:
        for name, server in runner.kept.items():
            server.stop()
            results["servers"][name]["exit_code"] = server.process.returncode
        if ceiling is not None:
            ceiling.stop()
        if config.keep_work:
            progress(f"work directory kept: {work}\n")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = loadavg()
    results["figures"] = figures_of(config, results)
    results["targets"] = targets_of(config, results["figures"])
    results["required_figures"] = required_figures(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(config, results))
    print(f"\nwritten to {config.out}")
    return 0


def record_server(results: dict[str, Any], server: Server, *, ready: bool) -> None:
    entry: dict[str, Any] = {"spec": server.spec, "ready": ready, "ready_seconds": server.ready_seconds}
    if ready:
        mem = memory(server.process.pid)
        entry["rss_ready_mib"], entry["hwm_ready_mib"] = mem.get("VmRSS"), mem.get("VmHWM")
    events = server.events()
    entry["startup"] = {e["event"]: e["t"] for e in events if e["event"] != "seeding"}
    seeding = [e for e in events if e["event"] == "seeding"]
    if seeding:
        entry["seeding_progress"] = [(e["claims"], e["t"]) for e in seeding]
    if not ready:
        entry["log_tail"] = server.log_tail()
    results["servers"][server.name] = entry


if __name__ == "__main__":
    sys.exit(main())
