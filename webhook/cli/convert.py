"""``dra-bridge convert -f FILE|- [-n NAMESPACE]``: offline conversion for GitOps repositories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from webhook.cli.common import add_policies_flag, dump_yaml, fail, load_index
from webhook.translate.catalogue import CatalogueError
from webhook.translate.convert import convert_documents


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "convert",
        help="rewrite legacy GPU requests in manifests; print objects then the templates they need",
        description="Converts Pods and the Pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, "
        "Jobs and CronJobs. Output: multi-document YAML on stdout. On any error nothing is printed to stdout. Reads the "
        "files of -f (- for stdin) and the catalogue of --policies (./policies when it exists, else the shipped one).",
    )
    parser.add_argument("-f", "--filename", action="append", required=True, help="file, folder or - for stdin")
    parser.add_argument("-n", "--namespace", help="namespace for objects that name none")
    add_policies_flag(parser)
    parser.set_defaults(run=run)


def _files(names: list[str]) -> list[tuple[str, str]]:
    out = []
    for name in names:
        if name == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(name)
        if path.is_dir():
            for child in sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]):
                out.append((str(child), child.read_text(encoding="utf-8")))
        else:
            out.append((name, path.read_text(encoding="utf-8")))
    return out


def read_documents(names: list[str]) -> list[Any]:
    """Every YAML document in the named files, folders (recursively) or stdin, in order."""
    documents: list[Any] = []
    for origin, text in _files(names):
        try:
            documents.extend(d for d in yaml.safe_load_all(text) if d is not None)
        except yaml.YAMLError as err:
            raise ValueError(f"{origin}: not valid YAML: {err}") from None
    return documents


def run(args: argparse.Namespace) -> int:
    try:
        index = load_index(args)
        documents = read_documents(args.filename)
    except (CatalogueError, OSError, ValueError) as err:
        return fail(str(err))
    result = convert_documents(documents, index=index, namespace=args.namespace)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.errors:
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
        return fail(f"{len(result.errors)} object(s) cannot be converted; nothing was written")
    if result.objects or result.templates:
        sys.stdout.write(dump_yaml([*result.objects, *result.templates]))
        sys.stdout.flush()
    for line in result.converted:
        print(f"converted: {line}", file=sys.stderr)
    return 0
