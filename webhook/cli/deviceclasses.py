"""``dra-bridge deviceclasses [--drivers a,b]``: render the unified DeviceClasses."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from webhook.cli.common import add_policies_flag, dump_yaml, fail, load_index
from webhook.translate.catalogue import CatalogueError
from webhook.translate.deviceclasses import render_device_classes


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "deviceclasses",
        help="render the unified DeviceClasses for chosen drivers",
        description="Reads the catalogue (catalogue*.yaml of --policies: ./policies when it exists, else the "
        "shipped one) and prints a DeviceClass per driver and kind of device.",
    )
    parser.add_argument("--drivers", help="comma-separated catalogue driver names (default: all)")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_policies_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()] if args.drivers else None
    try:
        classes = render_device_classes(load_index(args).catalogue, drivers=drivers)
    except (CatalogueError, OSError) as err:
        return fail(str(err))
    if args.output == "json":
        json.dump({"apiVersion": "v1", "kind": "List", "items": classes}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(dump_yaml(classes))
    return 0
