"""Shared pieces of the sub-commands: the catalogue flag and YAML output."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from webhook.errors import ClusterError
from webhook.serving.settings import default_policies_dir
from webhook.translate.catalogue import CatalogueError, CatalogueIndex, load_catalogue

if TYPE_CHECKING:
    from webhook.cluster.kube import KubeCluster

NO_CLUSTER_HINT = "point KUBECONFIG at a kubeconfig, create ~/.kube/config, or run inside a Pod"


def add_policies_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        type=Path,
        default=None,
        help="folder with catalogue*.yaml and quota*.yaml (default: ./policies when it exists, else the shipped one)",
    )


def policies_dir(args: argparse.Namespace) -> Path:
    """``--policies``, else ./policies when it exists, else the folder shipped with the package."""
    folder: Path = args.policies or default_policies_dir()
    return folder


def connect(namespace: str) -> KubeCluster:
    """The live cluster, or ``ClusterError`` with one line that says what is missing."""
    from webhook.cluster.kube import KubeCluster

    try:
        return KubeCluster.from_environment(namespace=namespace)
    except ClusterError as err:
        where = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        raise ClusterError(f"{err} (kubeconfig: {where}; {NO_CLUSTER_HINT})") from None


def load_index(args: argparse.Namespace) -> CatalogueIndex:
    from webhook.serving.server import catalogue_files

    return CatalogueIndex(load_catalogue(catalogue_files(policies_dir(args))))


def dump_yaml(documents: Iterable[Any]) -> str:
    text: str = yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False, width=120)
    return text


def fail(message: str, code: int = 1) -> int:
    print(f"dra-bridge: {message}", file=sys.stderr)
    return code


__all__ = [
    "CatalogueError",
    "ClusterError",
    "add_policies_flag",
    "connect",
    "dump_yaml",
    "fail",
    "load_index",
    "policies_dir",
]
