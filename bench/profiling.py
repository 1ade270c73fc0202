"""Where dra-bridge's time goes: profiles of the paths the benchmark measures.

    python bench/profiling.py seed --claims 20000            # cProfile: add_claim -> usage ledger
    python bench/profiling.py app --workload mutate_small    # pyinstrument: one process, no sockets
    python bench/profiling.py live --workload mutate_small   # cProfile in the real server under vegeta
    python bench/profiling.py paced --claims 100000 --devices 10000   # latency in one process at 200 req/s
    python bench/profiling.py tenants                                 # finding a namespace's tenant, 10 to 10,000 tenants
    python bench/profiling.py cold --workload mutate_small            # one request with warm caches, and after a sweep of 64 MiB

``app`` sends AdmissionReviews straight into the ASGI app (FastAPI, the HTTP layer, the audit log,
the engine; decisions run on the event loop, so one profiler sees the whole request). ``live`` runs bench/server.py on
CPU 0 and vegeta on CPU 1 like bench/run.py, with cProfile in every server thread timed by that
thread's CPU clock (so waiting threads cost nothing), and prints the merged profile. cProfile slows
the server about twice; read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workload  # noqa: E402

WORKLOADS = {
    "mutate_small": ("/mutate", "small"),
    "mutate_large": ("/mutate", "large"),
    "mutate_no_gpu": ("/mutate", "no-gpu"),
    "validate": ("/validate", "claims"),
    "validate_rules": ("/validate", "claims-rules"),
}


def runtime_for(
    *, claims: int, tenants: int, rules: int, rule_tenants: int, audit: Path, devices: int = 0, device_shapes: int = 100
) -> Any:
    from bench.server import seed_claims, seed_devices, seeded_cluster
    from webhook.serving.server import build_runtime
    from webhook.serving.settings import Settings

    spec = {
        "claims": claims,
        "tenants": tenants,
        "rules": rules,
        "rule_tenants": rule_tenants,
        "devices": devices,
        "device_shapes": device_shapes,
    }
    cluster = seeded_cluster(spec)
    fields: dict[str, Any] = {"dev": True, "policies_dir": ROOT / "policies", "log_level": "warning"}
    if "audit_file" in Settings.model_fields:
        fields["audit_file"] = str(audit)
    runtime = build_runtime(Settings(**fields), cluster=cluster)
    if devices:
        seed_devices(cluster, spec)
    seed_claims(cluster, spec)
    return runtime


def bodies(name: str, count: int, *, tenants: int, rule_tenants: int) -> list[bytes]:
    body = WORKLOADS[name][1]
    if body.startswith("claims"):
        spread = rule_tenants if body == "claims-rules" else tenants
        return [workload.encode(workload.claim_review(i, tenants=spread, run="profile")) for i in range(count)]
    make = {"small": workload.small_gpu_pod, "large": workload.large_pod, "no-gpu": workload.no_gpu_pod}[body]
    return [workload.encode(workload.pod_review(make()))] * count


# -- seed ---------------------------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace) -> None:
    from bench.server import seed_devices, seeded_cluster
    from webhook.serving.server import build_runtime
    from webhook.serving.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "claims": 0,
            "tenants": args.tenants,
            "rules": 0,
            "rule_tenants": 0,
            "devices": args.devices,
            "device_shapes": args.device_shapes,
        }
        cluster = seeded_cluster(spec)
        fields: dict[str, Any] = {"dev": True, "policies_dir": ROOT / "policies", "log_level": "warning"}
        if "audit_file" in Settings.model_fields:
            fields["audit_file"] = str(Path(tmp) / "audit.log")
        runtime = build_runtime(Settings(**fields), cluster=cluster)
        claims = [workload.stored_claim(i, tenants=args.tenants) for i in range(args.claims)]
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        if args.devices:
            seed_devices(cluster, spec)
        for claim in claims:
            cluster.add_claim(claim)
        profiler.disable()
        elapsed = time.perf_counter() - started
        print(
            f"seeded {args.devices} devices and {runtime.quota.ledger.claim_count} claims in {elapsed:.2f} s under cProfile "
            f"({1e6 * elapsed / max(1, args.claims):.0f} us per claim)"
        )
        print_stats(profiler, args.top)


def print_stats(profiler: cProfile.Profile, top: int) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(order).print_stats(top)
        print(f"--- by {order} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:20000])


# -- app (in process) ----------------------------------------------------------------------------------


async def call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8443),
    }
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def cmd_app(args: argparse.Namespace) -> None:
    from pyinstrument import Profiler

    path = WORKLOADS[args.workload][0]
    rules = args.rules if args.workload == "validate_rules" else 0
    payloads = bodies(args.workload, args.requests + 200, tenants=args.tenants, rule_tenants=args.rule_tenants)
    warm, timed = payloads[:200], payloads[200:]

    def runtime(tmp: str, name: str) -> Any:
        return runtime_for(
            claims=args.claims,
            tenants=args.tenants,
            rules=rules,
            rule_tenants=args.rule_tenants,
            audit=Path(tmp) / f"audit-{name}.log",
            devices=args.devices,
            device_shapes=args.device_shapes,
        )

    async def drive(app: Any, batch: list[bytes]) -> float:
        """CPU seconds (every thread of this process) to answer ``batch`` one after the other."""
        started = time.process_time()
        for body in batch:
            status, answer = await call(app, path, body)
            if status != 200 or b'"allowed":true' not in answer:
                raise SystemExit(f"unexpected answer {status}: {answer[:300]!r}")
        return time.process_time() - started

    with tempfile.TemporaryDirectory() as tmp:
        built = runtime(tmp, "app")
        asyncio.run(drive(built.app, warm))
        cpu = asyncio.run(drive(built.app, timed))
        profiler = Profiler(interval=0.0005)
        profiler.start()
        asyncio.run(drive(built.app, timed[: max(1, len(timed) // 2)]))
        profiler.stop()
    n = len(timed)
    print(
        f"{args.workload}: {1e3 * cpu / n:.3f} ms CPU/request (requests one at a time, no sockets, no TLS, one process)"
    )
    print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
    if args.html:
        Path(args.html).write_text(profiler.output_html())
        print(f"HTML profile: {args.html}")


def cmd_cold(args: argparse.Namespace) -> None:
    """The loop thread's CPU per request one after the other (caches warm), and after sweeping
    ``--sweep-mib`` of memory before each request (caches cold, as on a server whose cores spend the
    time between requests elsewhere: at 40 Pods/s on 2 cores shared with the control plane, a
    decision that takes 0.07 ms back to back took 0.5 ms). Medians of ``--requests``."""
    path = WORKLOADS[args.workload][0]
    payloads = bodies(args.workload, args.requests + 50, tenants=args.tenants, rule_tenants=args.rule_tenants)
    sweep = bytearray(args.sweep_mib << 20)
    ones = b"\1" * (len(sweep) // 64)

    with tempfile.TemporaryDirectory() as tmp:
        built = runtime_for(
            claims=args.claims,
            tenants=args.tenants,
            rules=args.rules if args.workload == "validate_rules" else 0,
            rule_tenants=args.rule_tenants,
            audit=Path(tmp) / "audit.log",
        )
        loop = asyncio.new_event_loop()
        for body in payloads[:50]:
            loop.run_until_complete(call(built.app, path, body))
        figures = {}
        for name, cold in (("warm", False), ("cold", True)):
            spent = []
            for body in payloads[50:]:
                if cold:
                    sweep[::64] = ones  # one write per cache line
                started = time.thread_time()
                status, answer = loop.run_until_complete(call(built.app, path, body))
                spent.append(time.thread_time() - started)
                if status != 200 or b'"allowed":true' not in answer:
                    raise SystemExit(f"unexpected answer {status}: {answer[:300]!r}")
            figures[name] = sorted(spent)[len(spent) // 2] * 1e3
        loop.close()
    print(
        f"{args.workload}: {figures['warm']:.3f} ms warm, {figures['cold']:.3f} ms after a {args.sweep_mib} MiB sweep "
        f"({figures['cold'] / figures['warm']:.1f}x), CPU of the loop thread per request, median of {args.requests}"
    )


# -- paced (in process, at a fixed rate) -----------------------------------------------------------------


def cmd_paced(args: argparse.Namespace) -> None:
    """Latency of one process answering at a fixed rate, without sockets, TLS or other processes'
    time slices in the figure: the server's own pauses (the garbage collector's, a reprice) apart
    from the machine's. Collected and frozen first, as ``serve`` does once synced."""
    import gc

    from webhook.serving.collector import settle

    path = WORKLOADS[args.workload][0]
    rules = args.rules if args.workload == "validate_rules" else 0
    count = int(args.rate * args.seconds)
    payloads = bodies(args.workload, count + 200, tenants=args.tenants, rule_tenants=args.rule_tenants)
    full: list[float] = []
    began: list[float] = []

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[:] = [time.perf_counter()]
        elif info["generation"] == 2 and began:
            full.append(time.perf_counter() - began[0])

    async def drive(app: Any) -> tuple[float, list[float]]:
        for body in payloads[:200]:  # the first decision prices the claims after the inventory came in
            await call(app, path, body)
        gc.callbacks.append(collected)
        latencies = []
        started, cpu = time.perf_counter(), time.process_time()
        for i, body in enumerate(payloads[200:]):
            wait = started + i / args.rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            sent = time.perf_counter()
            status, answer = await call(app, path, body)
            latencies.append(time.perf_counter() - sent)
            if status != 200 or b'"allowed":true' not in answer:
                raise SystemExit(f"unexpected answer {status}: {answer[:300]!r}")
        gc.callbacks.remove(collected)
        return time.process_time() - cpu, latencies

    with tempfile.TemporaryDirectory() as tmp:
        built = runtime_for(
            claims=args.claims,
            tenants=args.tenants,
            rules=rules,
            rule_tenants=args.rule_tenants,
            audit=Path(tmp) / "audit.log",
            devices=args.devices,
            device_shapes=args.device_shapes,
        )
        settle()
        cpu, latencies = asyncio.run(drive(built.app))
    ms = sorted(1e3 * x for x in latencies)
    n = len(ms)
    print(
        f"{args.workload}, {args.claims:,} claims, {args.devices:,} devices: {args.rate} req/s for {args.seconds:g} s, "
        f"{1e3 * cpu / n:.3f} ms CPU/request; p50 {ms[n // 2]:.3f}, p99 {ms[int(n * 0.99)]:.3f}, "
        f"p99.9 {ms[int(n * 0.999)]:.3f}, max {ms[-1]:.1f} ms; full collections {len(full)}, "
        f"longest {1e3 * max(full, default=0):.1f} ms"
    )


# -- live (cProfile in every thread of the real server under vegeta) --------------------------------------


def cmd_live(args: argparse.Namespace) -> None:
    import pstats

    from bench.run import LOAD_CPU, SERVER_CPU, start_server, wait_ready
    from bench.vegeta import Attack, ensure_vegeta, run_attack
    from webhook.certs.files import ensure_dev_certs

    vegeta, _ = ensure_vegeta()
    taskset = shutil.which("taskset")
    server_prefix = [taskset, "-c", str(SERVER_CPU)] if taskset else []
    load_prefix = [taskset, "-c", str(LOAD_CPU)] if taskset else []
    path, body = WORKLOADS[args.workload]
    rules = args.rules if args.workload == "validate_rules" else 0
    spec: dict[str, Any] = {
        "app": "dra-bridge",
        "claims": args.claims,
        "tenants": args.tenants,
        "rules": rules,
        "rule_tenants": args.rule_tenants,
        "devices": args.devices,
        "device_shapes": args.device_shapes,
    }
    if args.ceiling:
        spec = {"app": "ceiling"}
    work = Path(tempfile.mkdtemp(prefix="dra-bridge-profile-"))
    certs = ensure_dev_certs(work / "certs")
    stats_file = work / "server.pstats"
    server = start_server(
        "profiled",
        spec,
        python=args.python,
        certs=certs,
        work=work,
        cpu_prefix=server_prefix,
        extra_args=("--cprofile", str(stats_file)),
    )
    try:
        if not wait_ready(server, ca=certs / "ca.crt", timeout=900):
            raise SystemExit(f"server not ready:\n{server.log_tail()}")
        count = int((args.rate or 3000) * args.seconds) + 100
        spread = args.rule_tenants if body == "claims-rules" else args.tenants
        targets = work / "targets.jsonl"
        with targets.open("w") as out:
            if body.startswith("claims"):
                for i in range(count):
                    review = workload.claim_review(i, tenants=spread, run="live")
                    out.write(workload.vegeta_target(server.url + path, workload.encode(review)) + "\n")
            else:
                make = {"small": workload.small_gpu_pod, "large": workload.large_pod, "no-gpu": workload.no_gpu_pod}[
                    body
                ]
                out.write(
                    workload.vegeta_target(server.url + path, workload.encode(workload.pod_review(make()))) + "\n"
                )
        attack = Attack("profile", targets, args.rate, args.seconds, None if args.rate else args.workers)
        run_attack(vegeta, attack, root_certs=certs / "ca.crt", output=work / "results.bin", cpu_prefix=load_prefix)
    finally:
        server.stop()
    if not stats_file.exists():
        raise SystemExit(f"no profile written:\n{server.log_tail()}")
    stats = pstats.Stats(str(stats_file))
    print(
        f"{args.workload if not args.ceiling else 'ceiling'}: CPU time of every server thread (cProfile, "
        f"time.thread_time), {args.seconds:g} s of {'saturation' if not args.rate else f'{args.rate} req/s'}"
    )
    for order in ("tottime", "cumulative"):
        out_text = io.StringIO()
        stats.stream = out_text  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(args.top)
        print(f"--- by {order} ---")
        print("\n".join(line for line in out_text.getvalue().splitlines() if line.strip()))
    if args.keep:
        shutil.copy(stats_file, args.keep)
        print(f"pstats file: {args.keep} (python -m pstats, snakeviz)")
    shutil.rmtree(work, ignore_errors=True)


def cmd_tenants(args: argparse.Namespace) -> None:
    """Microseconds to find a namespace's tenant (``PolicySet.tenant_for``) among N tenants each chosen
    by a namespace selector: the last tenant's selector, the tenant label, and no tenant (the default)."""
    import functools
    import timeit

    import yaml

    from webhook.quota.policy import PolicySource, build_policy_set, parse_policy_document

    print(f"{'tenants':>8} {'by selector (last)':>19} {'by tenant label':>16} {'none: default':>14}   us per lookup")
    for count in args.counts:
        specs = [{"name": f"t{i}", "namespaceSelector": {"team": f"team-{i}"}} for i in range(count)]
        document = {
            "apiVersion": "dra-bridge.io/v1alpha1",
            "kind": "QuotaPolicy",
            "tenantLabel": "owner",
            "tenants": specs,
            "default": {"limits": {"devices": {"gpu.dra-bridge.io": 1}}},
        }
        policies = build_policy_set(
            [(PolicySource("bench", "1"), parse_policy_document(yaml.safe_dump(document), origin="bench"))]
        )
        cases = (
            {"team": f"team-{count - 1}", "kubernetes.io/metadata.name": "ns"},
            {"owner": f"t{count - 1}", "kubernetes.io/metadata.name": "ns"},
            {"kubernetes.io/metadata.name": "ns"},
        )
        figures = []
        for labels in cases:
            number = max(20, 200_000 // count)
            lookup = functools.partial(policies.tenant_for, "ns", labels)
            best = min(timeit.repeat(lookup, number=number, repeat=5))
            figures.append(best / number * 1e6)
        print(f"{count:>8} {figures[0]:>19.2f} {figures[1]:>16.2f} {figures[2]:>14.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--claims", type=int, default=0)
    common.add_argument("--tenants", type=int, default=1000)
    common.add_argument("--rules", type=int, default=5)
    common.add_argument("--rule-tenants", type=int, default=10)
    common.add_argument("--top", type=int, default=30)
    common.add_argument("--devices", type=int, default=0, help="published GPUs (and the project's DeviceClasses)")
    common.add_argument("--device-shapes", type=int, default=100)
    seed = sub.add_parser("seed", parents=[common])
    seed.set_defaults(func=cmd_seed)
    app = sub.add_parser("app", parents=[common])
    app.add_argument("--workload", choices=sorted(WORKLOADS), default="mutate_small")
    app.add_argument("--requests", type=int, default=3000)
    app.add_argument("--html")
    app.set_defaults(func=cmd_app)
    paced = sub.add_parser("paced", parents=[common])
    paced.add_argument("--workload", choices=sorted(WORKLOADS), default="validate")
    paced.add_argument("--rate", type=int, default=200)
    paced.add_argument("--seconds", type=float, default=30)
    paced.set_defaults(func=cmd_paced)
    live = sub.add_parser("live", parents=[common])
    live.add_argument("--workload", choices=sorted(WORKLOADS), default="mutate_small")
    live.add_argument("--ceiling", action="store_true", help="profile the ceiling instead")
    live.add_argument("--seconds", type=float, default=10)
    live.add_argument("--rate", type=int, default=0, help="req/s; 0: saturation with --workers")
    live.add_argument("--workers", type=int, default=32)
    live.add_argument("--python", default=sys.executable)
    live.add_argument("--keep", help="copy the pstats file here")
    live.set_defaults(func=cmd_live)
    cold = sub.add_parser("cold", parents=[common])
    cold.add_argument("--workload", choices=sorted(WORKLOADS), default="mutate_small")
    cold.add_argument("--requests", type=int, default=300)
    cold.add_argument("--sweep-mib", type=int, default=64)
    cold.set_defaults(func=cmd_cold)
    tenants = sub.add_parser("tenants")
    tenants.add_argument("--counts", type=int, nargs="+", default=[10, 1000, 10000])
    tenants.set_defaults(func=cmd_tenants)
    args = parser.parse_args(argv)
    if args.command == "seed" and args.claims == 0:
        args.claims = 20000
    args.func(args)


if __name__ == "__main__":
    main()
