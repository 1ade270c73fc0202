"""``dra-bridge serve [--dev]``: the HTTPS admission server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from webhook.cli.common import fail


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the HTTPS admission webhook",
        description="Serves POST /mutate, POST /validate, GET /healthz, /readyz and /metrics over TLS. "
        "Flags override DRA_BRIDGE_* environment variables. Reads by default: the catalogue and quota*.yaml of "
        "./policies when it exists (else the shipped folder), tls.crt/tls.key from /etc/dra-bridge/tls, the cluster "
        "of the in-cluster credentials or $KUBECONFIG; writes the audit log to /var/log/dra-bridge/audit.log. "
        "With --dev: certificates in certs/dev/ (made when missing), an in-memory cluster seeded with the "
        "quota*.yaml ConfigMaps, the audit log in .dra-bridge/audit.log, all relative to the current folder.",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="no cluster needed: throwaway certificates in certs/dev/, in-memory cluster state, on 127.0.0.1",
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--cert-dir", type=Path, help="folder with tls.crt and tls.key (reloaded when they change)")
    parser.add_argument("--client-ca", type=Path, help="require apiserver client certificates signed by this CA")
    parser.add_argument(
        "--policies",
        type=Path,
        help="folder with catalogue*.yaml and quota*.yaml (default: ./policies when it exists, else the shipped one)",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        help="with --dev: a folder of ResourceSlice and DeviceClass YAML files for quota's device inventory "
        "(default: the catalogue's known models only)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook.serving.server import serve
    from webhook.serving.settings import Settings

    overrides: dict[str, Any] = {}
    if args.dev:
        overrides.update(dev=True, host="127.0.0.1")
    for flag, key in (
        ("host", "host"),
        ("port", "port"),
        ("cert_dir", "cert_dir"),
        ("client_ca", "client_ca_file"),
        ("policies", "policies_dir"),
        ("inventory", "inventory_dir"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        return fail(f"bad setting: {err}")
    serve(settings)
    return 0
