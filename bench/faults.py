"""Faults on the real control plane (issue 14 item 5): certificate rotation under load, and the
apiserver restarted under two replicas.

    .venv/bin/python bench/faults.py [--rate 200] [--seconds 40] [--claims 200] [--down 5]

- ``rotation``: one ``dra-bridge serve`` (certificates reloaded from files every 0.5 s) gets
  AdmissionReviews straight over HTTPS at --rate per second for --seconds (the apiserver cannot send
  200 reviews per second on two shared cores beside everything else; the client plays it, including
  its caBundle): at 1/4 a new leaf from the same CA, at 1/2 the client trusts old and new CA (CA
  rollover 1/2), at 3/4 a leaf of the new CA (2/2). Every 10th request closes its connection, so
  new TLS handshakes meet every step. Failed reviews must be 0.
- ``restart``: two replicas behind the round-robin proxy (tests/e2e/replicas.py), --claims claims of
  one tenant, the apiserver stopped for --down seconds and started again: /readyz sampled every
  50 ms on both replicas, a claim review sent to each while not ready, --claims more claims and a
  third of the first deleted afterwards, the usage recounted.

The kill of a replica while GPU Pods are created is the ``kill-pods`` phase of bench/replicas.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.e2e import CpuMeter, log  # noqa: E402
from bench.run import cpu_model, loadavg  # noqa: E402
from tests.e2e.controlplane import DRA_FEATURE_GATES, LOOPBACK, ControlPlane, build_control_plane  # noqa: E402
from tests.e2e.faults import restart_apiserver, rotate_under_load  # noqa: E402
from tests.e2e.helpers import BRIDGE_NAMESPACE, DEVICECLASSES, BridgeServer, Kube  # noqa: E402
from tests.e2e.replicas import TENANT_LABEL, ReplicaPair, policy_configmap  # noqa: E402
from webhook.certs.files import write_pair  # noqa: E402
from webhook.certs.issue import create_ca, create_serving_cert  # noqa: E402

CPUS = os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="reviews per second during rotation (default 200)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of the rotation phase (default 40)")
    p.add_argument("--claims", type=int, default=200, help="claims before and after the restart (default 200)")
    p.add_argument("--down", type=float, default=5.0, help="seconds the apiserver stays down (default 5)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="dra-bridge-bench-faults-"))
    machine: dict[str, Any] = {"nproc": CPUS, "cpu_model": cpu_model(), "loadavg_start": loadavg()}
    cp = ControlPlane(build_control_plane(), work_dir / "control-plane", DRA_FEATURE_GATES)
    pair: ReplicaPair | None = None
    server: BridgeServer | None = None
    results: dict[str, Any] = {}
    try:
        cp.start()
        kube = Kube(cp)
        kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})

        log("phase rotation")
        (work_dir / "rotation").mkdir()
        server = BridgeServer(
            work_dir=work_dir / "rotation",
            kubeconfig=cp.kubeconfig,
            env={"DRA_BRIDGE_CERT_RELOAD_INTERVAL_SECONDS": "0.5"},
        )
        ca = create_ca(common_name="dra-bridge-bench-ca")
        write_pair(
            server.cert_dir, ca=ca, serving=create_serving_cert(ca=ca, dns_names=["localhost"], ip_addresses=[LOOPBACK])
        )
        server.ca_pem = ca.cert_pem
        server.start()
        srv = server
        meter = CpuMeter(lambda: {**cp.pids(), "dra-bridge": srv.proc.pid if srv.proc else 0, "client": os.getpid()})
        before, started = meter.snapshot(), time.monotonic()
        rotation = asdict(rotate_under_load(server, ca, rate=args.rate, seconds=args.seconds))
        cpu = CpuMeter.delta(before, meter.snapshot())
        rotation["cpu_seconds"] = {k: round(v, 1) for k, v in sorted(cpu.items())}
        rotation["other_share"] = round(cpu["other"] / ((time.monotonic() - started) * CPUS), 3)
        results["rotation"] = rotation
        log(f"  {json.dumps(rotation)}")
        server.stop()
        server = None

        log("phase restart")
        pair = ReplicaPair(kube, work_dir / "replicas")
        pair.start()
        pair.register()
        kube.apply(policy_configmap({"rf-restart": 100_000}))
        pair.wait_policy()
        ns = kube.namespace("bench-rf-restart", {TENANT_LABEL: "rf-restart"})
        p = pair
        meter = CpuMeter(lambda: {**cp.pids(), **p.pids(), "client": os.getpid()})
        before, started = meter.snapshot(), time.monotonic()
        restart = restart_apiserver(pair, "rf-restart", ns, claims=args.claims, down=args.down)
        cpu = CpuMeter.delta(before, meter.snapshot())
        restart["other_share"] = round(cpu["other"] / ((time.monotonic() - started) * CPUS), 3)
        results["restart"] = restart
        log(f"  {json.dumps(restart)}")
    finally:
        if server is not None:
            server.stop()
        if pair is not None:
            pair.stop()
        cp.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    machine["loadavg_end"] = loadavg()
    rot, rst = results["rotation"], results["restart"]
    ok = (
        not rot["failures"]
        and rot["answered"] == rot["requests"]
        and all(v == 0 for v in rst["ready_while_apiserver_down"].values())
        and all(status != 200 for status, _ in rst["claim_review_while_not_ready"].values())
        and rst["recount"]["equal"]
    )
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": results,
        "checks_passed": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
