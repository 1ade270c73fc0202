"""A real, kubelet-less Kubernetes control plane on 127.0.0.1 for e2e tests.

Runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler built by
``tests/e2e/build-control-plane.sh``.  Only the standard library, PyYAML and
the ``openssl`` CLI are used.  Everything (certificates, kubeconfigs, etcd data,
logs) lives in ``work_dir``; every listener is bound to 127.0.0.1.

Typical pytest use::

    @pytest.fixture(scope="session")
    def cluster(tmp_path_factory):
        bin_dir = build_control_plane()
        cp = ControlPlane(bin_dir, tmp_path_factory.mktemp("cp"), DRA_FEATURE_GATES)
        cp.start()
        yield cp
        cp.stop()

There is no kubelet: pods get scheduled (``spec.nodeName`` set, DRA claims
allocated) but never run.  ``create_node()`` registers a fake, schedulable
node.  The node-lifecycle controller is disabled so that such nodes are never
tainted not-ready/unreachable for lack of kubelet heartbeats.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "e2e" / "build-control-plane.sh"

LOOPBACK = "127.0.0.1"

# The gates the project runs with.  Pass them through filter_feature_gates()
# (ControlPlane does so per binary) so that GA-locked or unknown gates are
# dropped instead of making a component refuse to start.
DRA_FEATURE_GATES: dict[str, bool] = {
    "DynamicResourceAllocation": True,
    "DRAConsumableCapacity": True,
    "DRAExtendedResource": True,
    "DRAPrioritizedList": True,
    "DRAPartitionableDevices": True,
    "DRAAdminAccess": True,
}

DEFAULT_RUNTIME_CONFIG = (
    "resource.k8s.io/v1=true,resource.k8s.io/v1beta1=true,resource.k8s.io/v1beta2=true,resource.k8s.io/v1alpha3=true"
)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_CLUSTER_FIRST_IP = "10.0.0.1"


class ControlPlaneError(RuntimeError):
    """Starting or talking to the control plane failed."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def build_control_plane(script: Path = BUILD_SCRIPT, env: Mapping[str, str] | None = None) -> Path:
    """Run build-control-plane.sh (instant when cached); return the bin dir."""
    proc = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"{script} failed with exit code {proc.returncode}:\n{_tail_text(proc.stderr, 40)}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise ControlPlaneError(f"{script} printed no bin directory")
    return Path(lines[-1].strip())


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


_GATE_HELP_RE = re.compile(r"\b(?:kube:)?([A-Z][A-Za-z0-9]+)=true\|false \((ALPHA|BETA)\s*-\s*default=(true|false)\)")


def _probe_gate(binary: Path, name: str, value: bool) -> str | None:
    """Ask the binary whether --feature-gates=name=value parses.

    Returns None if accepted, else the binary's complaint.  Feature gates are
    validated while flags are parsed, before --version exits.
    """
    val = "true" if value else "false"
    proc = subprocess.run(
        [str(binary), f"--feature-gates={name}={val}", "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
    )
    out = proc.stdout
    m = re.search(rf"(unrecognized feature gate: {name}\b[^\"\n]*|cannot set feature gate {name}\b[^\"\n]*)", out)
    if m:
        return m.group(1).strip()
    if proc.returncode != 0:
        return _tail_text(out, 3).strip() or f"exit code {proc.returncode}"
    return None


def filter_feature_gates(binary: Path, gates: Mapping[str, bool]) -> tuple[dict[str, bool], dict[str, str]]:
    """Split ``gates`` into (accepted, dropped{name: reason}) for one binary.

    A gate listed as ALPHA/BETA in ``binary --help`` is accepted.  Gates not
    listed there are GA, deprecated or unknown: each is probed by passing the
    requested value and then the opposite value; a gate the binary rejects
    ("unrecognized", or locked to a different value) is dropped, and so is a
    gate that is locked to its default (GA-locked: setting it is a no-op that
    only produces warnings).  A GA gate that can still be toggled is kept.
    """
    binary = Path(binary)
    help_text = subprocess.run(
        [str(binary), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
    ).stdout
    listed = {m.group(1): (m.group(2), m.group(3)) for m in _GATE_HELP_RE.finditer(help_text)}
    accepted: dict[str, bool] = {}
    dropped: dict[str, str] = {}
    for name, value in gates.items():
        if name in listed:
            accepted[name] = bool(value)
            continue
        why = _probe_gate(binary, name, bool(value))
        if why is not None:
            dropped[name] = why
            continue
        why_other = _probe_gate(binary, name, not value)
        if why_other is not None and "locked" in why_other:
            dropped[name] = f"GA and locked to {str(bool(value)).lower()} ({why_other})"
            continue
        accepted[name] = bool(value)
    return accepted, dropped


def _gates_arg(gates: Mapping[str, bool]) -> str:
    return ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates.items()))


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Have Linux SIGKILL the child when the test process dies without stop().

    SIGKILL, not SIGTERM: all components would get the signal at once, and a
    kube-apiserver whose etcd is already gone can hang in graceful shutdown.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --------------------------------------------------------------------------
# certificates (openssl CLI)
# --------------------------------------------------------------------------


class _PKI:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_crt = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {' '.join(args[:2])} failed:\n{proc.stdout}")

    def make_ca(self, name: str = "ca") -> None:
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(self.dir / f"{name}.key"),
            "-out",
            str(self.dir / f"{name}.crt"),
            "-days",
            "3650",
            "-subj",
            f"/CN=dra-bridge-e2e-{name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )

    def make_cert(
        self, name: str, subject: str, *, server_sans: Iterable[str] = (), client: bool = True, ca: str = "ca"
    ) -> tuple[Path, Path]:
        key, csr, crt, ext = (self.dir / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
        ca_crt, ca_key = self.dir / f"{ca}.crt", self.dir / f"{ca}.key"
        self._openssl(
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            subject,
        )
        sans = list(server_sans)
        usages = (["serverAuth"] if sans else []) + (["clientAuth"] if client else [])
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        self._openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_crt),
            "-CAkey",
            str(ca_key),
            "-set_serial",
            str(secrets.randbits(63)),
            "-days",
            "365",
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )
        csr.unlink()
        ext.unlink()
        return crt, key

    def make_sa_keypair(self) -> tuple[Path, Path]:
        key, pub = self.dir / "sa.key", self.dir / "sa.pub"
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
        self._openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        return key, pub


# --------------------------------------------------------------------------
# control plane
# --------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on 127.0.0.1."""

    COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

    def __init__(
        self,
        bin_dir: Path,
        work_dir: Path,
        feature_gates: Mapping[str, bool],
        extra_apiserver_args: list[str] | None = None,
        *,
        runtime_config: str = DEFAULT_RUNTIME_CONFIG,
        extra_controller_manager_args: list[str] | None = None,
        extra_scheduler_args: list[str] | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ):
        self.bin_dir = Path(bin_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.feature_gates = dict(feature_gates)
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self.extra_controller_manager_args = list(extra_controller_manager_args or [])
        self.extra_scheduler_args = list(extra_scheduler_args or [])
        self.runtime_config = runtime_config
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.pki_dir = self.work_dir / "pki"
        self.ca_file = self.pki_dir / "ca.crt"
        self.admin_cert = self.pki_dir / "admin.crt"
        self.admin_key = self.pki_dir / "admin.key"
        self.ports: dict[str, int] = {}
        self.server = ""
        # component -> gates actually passed / gates dropped with the reason
        self.effective_feature_gates: dict[str, dict[str, bool]] = {}
        self.dropped_feature_gates: dict[str, dict[str, str]] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        self._log_files: list[IO[bytes]] = []
        self._atexit_registered = False

        for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
            if not (self.bin_dir / b).is_file():
                raise ControlPlaneError(f"missing binary {self.bin_dir / b} (run tests/e2e/build-control-plane.sh)")

    # ------------------------------------------------------------ public --

    def pids(self) -> dict[str, int]:
        """Process ids of the components that are running, by name (etcd, kube-apiserver, ...)."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def log_path(self, component: str) -> Path:
        return self.work_dir / "logs" / f"{component}.log"

    def start(self) -> ControlPlane:
        if self._procs:
            raise ControlPlaneError("control plane already started")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        for attempt in range(3):
            try:
                self._start()
                return self
            except ControlPlaneError as err:
                self.stop()
                # Ports are picked free, then bound by the component a moment later; on a busy
                # machine another process can take one in between. Pick new ones and try again.
                if "address already in use" not in str(err) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop all components (SIGTERM, then SIGKILL); safe to call repeatedly."""
        for name in reversed(self.COMPONENTS):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout)
            except ProcessLookupError:
                pass
        self._procs.clear()
        for f in self._log_files:
            with contextlib.suppress(OSError):
                f.close()
        self._log_files = []

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (SIGTERM, then SIGKILL): watches break, clients get refused."""
        proc = self._procs.pop("kube-apiserver", None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)

    def start_apiserver(self, timeout: float = 60.0) -> float:
        """Start kube-apiserver again on the same port and etcd; seconds until its /readyz is ok.
        The previous log is kept as ``kube-apiserver.log.1``."""
        started = time.monotonic()
        log = self.log_path("kube-apiserver")
        if log.exists():
            log.replace(log.with_name(log.name + ".1"))
        self._start_apiserver()
        self._wait(
            "kube-apiserver",
            started + timeout,
            lambda: self._https_ok(self.ports["kube-apiserver"], "/readyz", client=True),
        )
        return time.monotonic() - started

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        """``kubectl <args> -o json``, parsed."""
        obj: dict[str, Any] = json.loads(self.kubectl(*args, "-o", "json").stdout)
        return obj

    def create_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        cpu: str = "8",
        memory: str = "32Gi",
        pods: str = "110",
        taints: list[dict[str, str]] | None = None,
        extended: Mapping[str, str] | None = None,
    ) -> None:
        """Register a fake node (no kubelet) that the scheduler will bind pods to.

        ``extended``: extended resources in its capacity and allocatable, as a device plugin would
        advertise them through its kubelet (``{"nvidia.com/gpu": "4"}``).

        Needs: status.capacity/allocatable with cpu, memory and pods (pods > 0
        or nothing fits), a Ready=True condition, and no not-ready taint: the
        TaintNodesByCondition admission plugin adds
        node.kubernetes.io/not-ready:NoSchedule to every new Node, and only the
        node-lifecycle controller (disabled here, since without kubelet
        heartbeats it would taint the node unreachable and evict pods) would
        lift it.  So spec.taints is overwritten with ``taints`` (default none).
        """
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        resources = {"cpu": cpu, "memory": memory, "pods": pods, **(extended or {})}
        status = {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "fake node for e2e tests (no kubelet)",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [{"type": "Hostname", "address": name}],
            }
        }
        self.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
        self.kubectl("patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints or None}}))

    # ----------------------------------------------------------- internals --

    def _start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        deadline = time.monotonic() + self.start_timeout

        for comp in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            accepted, dropped = filter_feature_gates(self.bin_dir / comp, self.feature_gates)
            self.effective_feature_gates[comp] = accepted
            self.dropped_feature_gates[comp] = dropped

        self._make_pki()
        for p in ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            self.ports[p] = free_port()
        self.server = f"https://{LOOPBACK}:{self.ports['kube-apiserver']}"
        self._write_kubeconfigs()

        self._start_etcd()
        self._wait("etcd", deadline, self._etcd_healthy)

        self._start_apiserver()
        self._wait(
            "kube-apiserver", deadline, lambda: self._https_ok(self.ports["kube-apiserver"], "/readyz", client=True)
        )

        self._start_controller_manager()
        self._start_scheduler()
        self._wait(
            "kube-controller-manager",
            deadline,
            lambda: self._https_ok(self.ports["kube-controller-manager"], "/healthz"),
        )
        self._wait("kube-scheduler", deadline, lambda: self._https_ok(self.ports["kube-scheduler"], "/healthz"))

        def defaults_exist() -> bool:
            ns = self.kubectl("get", "namespace", "default", check=False)
            sa = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            return ns.returncode == 0 and sa.returncode == 0

        self._wait("kube-controller-manager", deadline, defaults_exist, what="default namespace and service account")

    def _make_pki(self) -> None:
        pki = _PKI(self.pki_dir)
        pki.make_ca()
        sans = [
            f"IP:{LOOPBACK}",
            f"IP:{SERVICE_CLUSTER_FIRST_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        pki.make_cert("apiserver", "/CN=kube-apiserver", server_sans=sans, client=False)
        pki.make_cert("admin", "/O=system:masters/CN=kubernetes-admin")
        pki.make_cert("controller-manager", "/CN=system:kube-controller-manager")
        pki.make_cert("scheduler", "/CN=system:kube-scheduler")
        # Aggregation layer (front proxy) identity, so that the requestheader
        # client CA is published to kube-system/extension-apiserver-authentication.
        pki.make_ca("front-proxy-ca")
        pki.make_cert("front-proxy-client", "/CN=front-proxy-client", ca="front-proxy-ca")
        pki.make_sa_keypair()

    def _write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "e2e", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": "default"}}],
            "current-context": "e2e",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)

    def _write_kubeconfigs(self) -> None:
        self._write_kubeconfig(self.kubeconfig, "kubernetes-admin", self.admin_cert, self.admin_key)
        for comp in ("controller-manager", "scheduler"):
            self._write_kubeconfig(
                self.work_dir / f"{comp}.kubeconfig",
                f"system:kube-{comp}",
                self.pki_dir / f"{comp}.crt",
                self.pki_dir / f"{comp}.key",
            )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.log_path(name)
        f = open(log, "wb")  # noqa: SIM115 - open for the process lifetime; fresh per start()
        self._log_files.append(f)
        f.write(f"# {' '.join(args)}\n".encode())
        f.flush()
        self._logs[name] = log
        self._procs[name] = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=str(self.work_dir),
            preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
        )

    def _start_etcd(self) -> None:
        data = self.work_dir / "etcd-data"
        if data.exists():
            shutil.rmtree(data)
        client = f"http://{LOOPBACK}:{self.ports['etcd']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=e2e",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=e2e={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.pki_dir
        args = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.ports['kube-apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # No kubelets/real endpoints here; a loopback endpoint for the
            # "kubernetes" service would be rejected by validation anyway.
            "--endpoint-reconciler-type=none",
            # Reach Services (a Service-based webhook, an aggregated API) through their Endpoints,
            # never their ClusterIP: there are no endpoints here, so the apiserver fails without
            # dialing anything, and no traffic ever leaves loopback for the private service range.
            "--enable-aggregator-routing=true",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--allow-privileged=true",
            f"--cert-dir={self.work_dir / 'apiserver-certs'}",
            f"--runtime-config={self.runtime_config}",
            "--profiling=false",
        ]
        gates = self.effective_feature_gates.get("kube-apiserver", {})
        if gates:
            args.append(f"--feature-gates={_gates_arg(gates)}")
        self._spawn("kube-apiserver", args + self.extra_apiserver_args)

    def _component_serving_args(self, comp: str, short: str) -> list[str]:
        kubeconfig = self.work_dir / f"{short}.kubeconfig"
        return [
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports[comp]}",
            f"--cert-dir={self.work_dir / (short + '-certs')}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]

    def _start_controller_manager(self) -> None:
        args = [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.work_dir / 'controller-manager.kubeconfig'}",
            *self._component_serving_args("kube-controller-manager", "controller-manager"),
            "--leader-elect=false",
            # All default controllers, the DRA resourceclaim controller, but no
            # node lifecycle controller: without kubelets it would taint every
            # node not-ready/unreachable and evict pods.
            "--controllers=*,resourceclaim-controller,-node-lifecycle-controller",
            # Each controller runs as its own service account with its
            # bootstrap RBAC role (system:kube-controller-manager alone may
            # not e.g. create ResourceClaims for the resourceclaim controller).
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}",
            f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
        ]
        gates = self.effective_feature_gates.get("kube-controller-manager", {})
        if gates:
            args.append(f"--feature-gates={_gates_arg(gates)}")
        self._spawn("kube-controller-manager", args + self.extra_controller_manager_args)

    def _start_scheduler(self) -> None:
        config = self.work_dir / "scheduler-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.work_dir / "scheduler.kubeconfig")},
                    "leaderElection": {"leaderElect": False},
                },
                sort_keys=False,
            )
        )
        args = [
            str(self.bin_dir / "kube-scheduler"),
            f"--config={config}",
            *self._component_serving_args("kube-scheduler", "scheduler"),
        ]
        gates = self.effective_feature_gates.get("kube-scheduler", {})
        if gates:
            args.append(f"--feature-gates={_gates_arg(gates)}")
        self._spawn("kube-scheduler", args + self.extra_scheduler_args)

    def _wait(self, comp: str, deadline: float, probe: Callable[[], bool], what: str = "ready") -> None:
        last_err = ""
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} while waiting for {comp} {what}; "
                        f"last lines of {self._logs[name]}:\n{tail(self._logs[name])}"
                    )
            try:
                if probe():
                    return
            except Exception as exc:
                last_err = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                log = self._logs.get(comp, self.log_path(comp))
                raise ControlPlaneError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {comp} {what}"
                    f"{' (last error: ' + last_err + ')' if last_err else ''}; last lines of {log}:\n{tail(log)}"
                )
            time.sleep(0.25)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.ports['etcd']}/health", timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")

    def _https_ok(self, port: int, path: str, client: bool = False) -> bool:
        if client:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        else:  # kube-controller-manager / kube-scheduler serve self-signed certs
            ctx = ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(f"https://{LOOPBACK}:{port}{path}", context=ctx, timeout=3) as r:
                return bool(r.status == 200 and r.read().strip() == b"ok")
        except urllib.error.HTTPError:
            return False
