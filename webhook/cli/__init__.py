"""The ``dra-bridge`` command line: one sub-command per module in this package (``common`` holds what they share)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from webhook.cli import audit, certs, convert, deviceclasses, policy, report, serve


class Parser(argparse.ArgumentParser):
    """No abbreviated long options, on every (sub-)command: ``--out`` must never be read as ``--output``.

    Sub-parsers are made with the class of their parent, so setting it here covers them all.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dra-bridge",
        description="Move legacy GPU requests to Kubernetes Dynamic Resource Allocation, and enforce GPU quota.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, convert, deviceclasses, policy, certs, audit, report):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
