"""Shared pieces of the sub-commands: the catalogue flag and YAML output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from webhook.serving.settings import default_policies_dir
from webhook.translate.catalogue import CatalogueError, CatalogueIndex, load_catalogue


def add_policies_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        type=Path,
        default=None,
        help="folder with catalogue*.yaml (default: ./policies, else the shipped one)",
    )


def load_index(args: argparse.Namespace) -> CatalogueIndex:
    from webhook.serving.server import catalogue_files

    folder = args.policies or default_policies_dir()
    return CatalogueIndex(load_catalogue(catalogue_files(folder)))


def dump_yaml(documents: Iterable[Any]) -> str:
    text: str = yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False, width=120)
    return text


def fail(message: str, code: int = 1) -> int:
    print(f"dra-bridge: {message}", file=sys.stderr)
    return code


__all__ = ["CatalogueError", "add_policies_flag", "dump_yaml", "fail", "load_index"]
