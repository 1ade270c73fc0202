"""vegeta, the load generator: build it (bench/ensure-vegeta.sh), attack, and read its results.

Attacks are open-model (``-rate=R``: requests leave on schedule whatever the server does; vegeta adds
workers when the ones it has are busy) or saturating (``-rate=0 -max-workers=N``: N requests in
flight at all times). Latency percentiles are computed here from every request's latency
(``vegeta encode -to csv``), nearest-rank, not taken from vegeta's own report.

A request succeeds when it got HTTP 200 with no transport error and its AdmissionReview response
is what the workload expects (allowed, and a patch exactly when one is expected); anything else is
a failure and is counted by kind.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
ENSURE = ROOT / "bench" / "ensure-vegeta.sh"
GO_MISSING = 3  # ensure-vegeta.sh's exit code when Go is not installed
Expect = Literal["allowed", "patched", "not-patched"]

csv.field_size_limit(sys.maxsize)  # response bodies of the large Pod are long base64 fields


class VegetaUnavailable(RuntimeError):
    """vegeta could not be built (Go missing): callers may skip."""


def ensure_vegeta() -> tuple[Path, str]:
    """The cached pinned vegeta (built on first use) and its version."""
    proc = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode == GO_MISSING:
        raise VegetaUnavailable(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{ENSURE} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1])
    version = subprocess.run([str(binary), "-version"], capture_output=True, text=True, check=True).stdout
    return binary, next((line.split(": ", 1)[1] for line in version.splitlines() if line.startswith("Version: ")), "?")


@dataclass(frozen=True)
class Attack:
    name: str
    targets: Path  # vegeta JSON targets, one per line (base64 bodies)
    rate: int  # requests per second; 0: saturation with ``workers`` in flight
    duration: float  # seconds
    workers: int | None = None  # saturation only
    timeout: float = 10.0  # per request, seconds; the apiserver's default webhook timeout

    def arguments(self, *, root_certs: Path, output: Path) -> list[str]:
        args = [
            "attack",
            f"-name={self.name}",
            f"-targets={self.targets}",
            "-format=json",
            f"-duration={self.duration}s",
            f"-root-certs={root_certs}",
            f"-timeout={self.timeout}s",
            "-http2=false",  # uvicorn speaks HTTP/1.1 only; say so rather than rely on ALPN
            "-keepalive=true",
            f"-output={output}",
        ]
        if self.rate:
            args.append(f"-rate={self.rate}/s")
        else:
            if not self.workers:
                raise ValueError(f"{self.name}: a saturation attack needs workers")
            args += ["-rate=0", f"-workers={self.workers}", f"-max-workers={self.workers}"]
        return args


def run_attack(vegeta: Path, attack: Attack, *, root_certs: Path, output: Path, cpu_prefix: Sequence[str]) -> None:
    command = [*cpu_prefix, str(vegeta), *attack.arguments(root_certs=root_certs, output=output)]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=attack.duration + attack.timeout + 60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"vegeta attack {attack.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (q in 0..1)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def judge(body: bytes, expect: Expect) -> str | None:
    """None when the AdmissionReview response is what the workload expects, else the failure kind."""
    try:
        response = json.loads(body)["response"]
    except (ValueError, KeyError, TypeError):
        return "not-an-admission-review"
    if response.get("allowed") is not True:
        return "denied"
    has_patch = bool(response.get("patch"))
    if expect == "patched" and not has_patch:
        return "no-patch"
    if expect == "not-patched" and has_patch:
        return "unexpected-patch"
    return None


def summarize(
    vegeta: Path, results: Path, *, expect: Expect, cpu_prefix: Sequence[str], samples: int = 3
) -> dict[str, Any]:
    """Figures of one attack from vegeta's binary results file."""
    proc = subprocess.Popen(
        [*cpu_prefix, str(vegeta), "encode", "-to=csv", str(results)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    failure_samples: list[str] = []
    first_start = last_start = last_end = None
    ok = 0
    for row in csv.reader(proc.stdout):
        start_ns, code, latency_ns, error, body64 = int(row[0]), row[1], int(row[2]), row[5], row[6]
        latencies.append(latency_ns / 1e6)
        codes[code] += 1
        first_start = start_ns if first_start is None else min(first_start, start_ns)
        last_start = start_ns if last_start is None else max(last_start, start_ns)
        last_end = start_ns + latency_ns if last_end is None else max(last_end, start_ns + latency_ns)
        kind: str | None
        if error or code != "200":
            kind = f"http-{code}" if code != "0" else "transport-error"
            detail = error or body64[:200]
        else:
            try:
                body = base64.b64decode(body64)
            except (ValueError, binascii.Error):
                body = b""
            kind = judge(body, expect)
            detail = body[:300].decode("utf-8", "replace")
        if kind is None:
            ok += 1
        else:
            failures[kind] += 1
            if len(failure_samples) < samples:
                failure_samples.append(f"{kind}: {detail}")
    if proc.wait() != 0:
        raise RuntimeError(f"vegeta encode {results} failed ({proc.returncode})")
    total = len(latencies)
    latencies.sort()
    sent_span = (last_start - first_start) / 1e9 if total > 1 and first_start is not None and last_start else 0.0
    span = (last_end - first_start) / 1e9 if total and first_start is not None and last_end else 0.0
    return {
        "requests": total,
        "succeeded": ok,
        "success_ratio": ok / total if total else 0.0,
        "failures": dict(failures),
        "failure_samples": failure_samples,
        "status_codes": dict(codes),
        "sent_rps": round((total - 1) / sent_span, 1) if sent_span else None,
        "throughput_rps": round(ok / span, 1) if span else None,  # successes per second, first send to last answer
        "latency_ms": {
            "p50": _round(percentile(latencies, 0.50)),
            "p90": _round(percentile(latencies, 0.90)),
            "p99": _round(percentile(latencies, 0.99)),
            "p999": _round(percentile(latencies, 0.999)),  # p99.9
            "max": _round(latencies[-1] if latencies else None),
            "mean": _round(sum(latencies) / total if total else None),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
