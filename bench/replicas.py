"""Two dra-bridge replicas behind one address on the real control plane (issue 13).

    .venv/bin/python bench/replicas.py [--claims 5000] [--rate 100] [--clients 32] [--out bench/results/replicas.json]

Starts the control plane of the end-to-end tests (tests/e2e/controlplane.py) with the project's
DeviceClasses, two ``dra-bridge serve`` processes (``DRA_BRIDGE_QUOTA_COORDINATION=lease``,
``DRA_BRIDGE_REPLICA=replica-a`` / ``replica-b``) behind a round-robin TLS pass-through proxy on
127.0.0.1, and the shipped webhook configurations pointing at the proxy (failurePolicy Fail for
ResourceClaims). The pieces are tests/e2e/replicas.py. Then, each phase followed by a recount (both
replicas' ``dra_bridge_quota_usage`` gauges against the claims the apiserver lists):

1. ``paced``: --claims ResourceClaims of one tenant POSTed to the apiserver at --rate per second
   (open model, up to --clients connections); latency from each request's scheduled send time;
   ``paced-forwarded``: the same with the proxy sending everything to the replica that does not own
   the tenant, so every claim is handed over (each phase reports ``decided_by`` and ``forwards``);
2. ``back-to-back``: --claims more from --clients clients, each sending its next when answered;
   during both the coordination Lease's annotation is sampled every 250 ms;
3. ``race``: a tenant filled to its limit less 4, then --racers claims at once: exactly 4 admitted;
4. ``kill-claims``: claims at --kill-rate per second for --kill-seconds, replica-b SIGKILLed
   half-way: failures against the requests in flight at that moment;
5. ``kill-pods``: the same with legacy GPU Pods (``nvidia.com/gpu: 1``), replica-a killed.

CPU: each phase reports the share of the machine's CPU that other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.e2e import CpuMeter, log  # noqa: E402
from bench.run import cpu_model, loadavg  # noqa: E402
from bench.vegeta import VegetaUnavailable, ensure_vegeta, percentile  # noqa: E402
from tests.e2e.controlplane import DRA_FEATURE_GATES, ControlPlane, build_control_plane  # noqa: E402
from tests.e2e.helpers import BRIDGE_NAMESPACE, DEVICECLASSES, Kube  # noqa: E402
from tests.e2e.replicas import (  # noqa: E402
    TENANT_LABEL,
    WHOLE,
    LeaseSampler,
    ReplicaPair,
    claims_path,
    decided_by,
    decision_buckets,
    kill_stream,
    lease_operations,
    load,
    namespaces_ready,
    operations_between,
    policy_configmap,
    race,
    recount,
    webhook_buckets,
    webhook_view,
)
from webhook.quota.replicas import owner_among  # noqa: E402

CPUS = os.cpu_count() or 1
LIMITS = {"rp-load": 1_000_000, "rp-race": 50, "rp-kill": 1_000_000, "rp-pods": 1_000_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--claims", type=int, default=5000, help="claims per load phase (default 5000)")
    p.add_argument("--rate", type=float, default=100.0, help="paced phase, claims per second (default 100)")
    p.add_argument("--clients", type=int, default=32, help="parallel clients (default 32)")
    p.add_argument("--racers", type=int, default=100, help="claims racing for the last 4 units (default 100)")
    p.add_argument("--kill-rate", type=float, default=20.0, help="objects per second while a replica dies (20)")
    p.add_argument("--kill-seconds", type=float, default=20.0, help="length of each kill phase (default 20)")
    p.add_argument(
        "--driver",
        choices=("vegeta", "httpx"),
        default="vegeta",
        help="paced phase: vegeta (Go, little CPU) or the httpx client of the other phases (default vegeta)",
    )
    p.add_argument(
        "--phases",
        default="paced,paced-forwarded,back-to-back,race,kill-claims,kill-pods",
        help="comma-separated subset of the phases, in their order (default: all)",
    )
    p.add_argument("--skip-pods", action="store_true", help="no kill phase with Pods")
    p.add_argument(
        "--no-forwarding",
        action="store_true",
        help="no peer addresses: each replica decides what reaches it, both write the Lease (the design before)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replicas.json")
    p.add_argument("--work-dir", type=Path, help="keep the control plane's and the replicas' files here")
    return p.parse_args(argv)


def vegeta_paced(
    cp: ControlPlane, pair: ReplicaPair, namespace: str, tenant: str, *, claims: int, rate: float, clients: int
) -> dict[str, Any]:
    """The paced phase with vegeta: one body with generateName, ``claims / rate`` seconds at ``rate``."""
    vegeta, _ = ensure_vegeta()
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"generateName": "v-"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": WHOLE, "count": 1}}]}},
    }
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        targets, results = Path(tmp) / "targets.json", Path(tmp) / "results.bin"
        target = {
            "method": "POST",
            "url": f"{cp.server}{claims_path(namespace)}",
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "header": {"Content-Type": ["application/json"], "Accept": ["application/json"]},
        }
        targets.write_text(json.dumps(target) + "\n")
        duration = claims / rate
        before, decided = webhook_buckets(cp), decision_buckets(pair)
        with LeaseSampler(cp, tenant) as sampler:
            subprocess.run(
                [
                    str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={int(rate)}/s",
                    f"-duration={duration}s", f"-max-workers={clients}", f"-connections={clients}",
                    f"-root-certs={cp.ca_file}", f"-cert={cp.admin_cert}", f"-key={cp.admin_key}",
                    "-timeout=30s", f"-output={results}",
                ],
                check=True, capture_output=True, timeout=duration + 120,
            )  # fmt: skip
        after, decided_after = webhook_buckets(cp), decision_buckets(pair)
        rows = list(csv.reader(subprocess.run(
            [str(vegeta), "encode", "-to=csv", str(results)], check=True, capture_output=True, text=True
        ).stdout.splitlines()))  # fmt: skip
    latencies = sorted(int(r[2]) / 1e6 for r in rows)
    codes: dict[str, int] = {}
    for r in rows:
        codes[r[1]] = codes.get(r[1], 0) + 1
    starts = [int(r[0]) for r in rows]
    ends = [int(r[0]) + int(r[2]) for r in rows]
    span = (max(ends) - min(starts)) / 1e9 if rows else 0.0
    q = {name: round(percentile(latencies, x) or 0.0, 1) for name, x in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    return {
        "driver": "vegeta",
        "requests": len(rows),
        "created": codes.get("201", 0),
        "failed": len(rows) - codes.get("201", 0),
        "status_codes": codes,
        "seconds": round(span, 2),
        "rate": round(len(rows) / span, 1) if span else None,
        "latency_ms": {**q, "max": round(latencies[-1], 1) if latencies else None},
        "paced_rate": rate,
        "clients": clients,
        "lease": sampler.summary(),
        "apiserver_webhook": webhook_view(before, after),
        "replicas_decision": webhook_view(decided, decided_after),
    }


class Phases:
    def __init__(self, cp: ControlPlane, pair: ReplicaPair) -> None:
        self.pair = pair
        self.meter = CpuMeter(lambda: {**cp.pids(), **pair.pids(), "client": os.getpid()})
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Any) -> dict[str, Any]:
        log(f"phase {name}")
        ops, sent, decided = lease_operations(self.pair), self.pair.forwards(), decided_by(self.pair)
        before, started = self.meter.snapshot(), time.monotonic()
        result: dict[str, Any] = fn()
        wall = time.monotonic() - started
        cpu = CpuMeter.delta(before, self.meter.snapshot())
        after = lease_operations(self.pair)
        result["lease_operations"] = operations_between(ops, after)
        result["forwards"] = operations_between(sent, self.pair.forwards())
        result["decided_by"] = operations_between(decided, decided_by(self.pair))
        result["cpu_seconds"] = {k: round(v, 1) for k, v in sorted(cpu.items())}
        result["other_share"] = round(cpu["other"] / (wall * CPUS), 3) if wall else None
        self.results[name] = result
        log(f"  {json.dumps({k: v for k, v in result.items() if k != 'cpu_seconds'})}")
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep = args.work_dir is not None
    work_dir = args.work_dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="dra-bridge-bench-replicas-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    machine: dict[str, Any] = {"nproc": CPUS, "cpu_model": cpu_model(), "loadavg_start": loadavg()}
    cp = ControlPlane(build_control_plane(), work_dir / "control-plane", DRA_FEATURE_GATES)
    pair: ReplicaPair | None = None
    ok = True
    try:
        cp.start()
        kube = Kube(cp)
        kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})
        pair = ReplicaPair(kube, work_dir / "replicas", forwarding=not args.no_forwarding)
        pair.start()
        pair.register()
        kube.apply(policy_configmap(LIMITS))
        pair.wait_policy()
        ns = {t: kube.namespace(f"bench-{t}", {TENANT_LABEL: t}) for t in LIMITS}
        namespaces_ready(kube, cp, list(ns.values()))
        phases = Phases(cp, pair)
        p = pair

        def with_recount(tenant: str, fn: Any) -> Any:
            def run() -> dict[str, Any]:
                result: dict[str, Any] = fn()
                result["recount"] = recount(p, tenant, [ns[tenant]])
                return result

            return run

        if args.driver == "vegeta":
            try:
                ensure_vegeta()
            except VegetaUnavailable as err:
                log(f"vegeta unavailable ({err}); the paced phase uses httpx")
                args.driver = "httpx"

        def paced_run() -> dict[str, Any]:
            if args.driver == "vegeta":
                return vegeta_paced(
                    cp, p, ns["rp-load"], "rp-load", claims=args.claims, rate=args.rate, clients=args.clients
                )
            return load(
                p, ns["rp-load"], "rp-load", claims=args.claims, rate=args.rate, clients=args.clients, prefix="p"
            )

        half = args.kill_seconds / 2
        # The replica that does not decide rp-load: every claim sent through it is handed over.
        other = next(n for n in p.servers if n != owner_among("rp-load", list(p.servers)))

        def through(replica: str, fn: Any) -> Any:
            def run() -> dict[str, Any]:
                backends, p.proxy.backends = p.proxy.backends, [p.servers[replica].port]
                time.sleep(6)  # the apiserver's idle connections to the other replica close (keep-alive 5 s)
                try:
                    result: dict[str, Any] = fn()
                    result["through"] = replica
                    return result
                finally:
                    p.proxy.backends = backends

            return run

        def killed(kind: str, namespace: str, victim: str, prefix: str) -> dict[str, Any]:
            result = kill_stream(
                p, namespace, kind=kind, rate=args.kill_rate, seconds=args.kill_seconds,
                victim=victim, kill_at=half, prefix=prefix,
            )  # fmt: skip
            p.servers[victim].start()  # back for the next phase
            return result

        plan: dict[str, tuple[str | None, Any]] = {
            "paced": ("rp-load", paced_run),
            "paced-forwarded": ("rp-load", through(other, paced_run)),
            "back-to-back": (
                "rp-load",
                lambda: load(p, ns["rp-load"], "rp-load", claims=args.claims, rate=0, clients=args.clients, prefix="b"),
            ),
            "race": ("rp-race", lambda: race(p, ns["rp-race"], limit=LIMITS["rp-race"], left=4, racers=args.racers)),
            "kill-claims": ("rp-kill", lambda: killed("claims", ns["rp-kill"], "replica-b", "k")),
            "kill-pods": (None, lambda: killed("pods", ns["rp-pods"], "replica-a", "g")),
        }
        wanted = [name for name in args.phases.split(",") if name]
        if args.skip_pods and "kill-pods" in wanted:
            wanted.remove("kill-pods")
        unknown = set(wanted) - set(plan)
        if unknown:
            raise SystemExit(f"unknown phases: {sorted(unknown)}")
        checks = []
        for name in wanted:
            tenant, fn = plan[name]
            result = phases.run(name, with_recount(tenant, fn) if tenant else fn)
            if name in ("paced", "paced-forwarded", "back-to-back"):
                checks.append(result["failed"] == 0)
            elif name == "race":
                checks.append(result["created"] == 4)
            else:
                checks.append(
                    result["failed"] <= result["in_flight_at_kill"] + result["sent_to_the_dead_replica_after_kill"]
                )
            if "recount" in result:
                checks.append(bool(result["recount"]["equal"]))
        ok = all(checks)
        machine["loadavg_end"] = loadavg()
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": machine,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "phases": phases.results,
            "checks_passed": ok,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")
    finally:
        if pair is not None:
            pair.stop()
        cp.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
