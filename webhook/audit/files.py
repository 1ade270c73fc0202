"""How the decision log's files are named, for the writer and the reader alike.

The current file is the configured path, say ``audit.log``; rotated files sit next to it as
``audit.log.<n>``, ``n`` counting up from 1 for the most recently rotated one, so a higher ``n``
is older. :class:`webhook.audit.log.RotatingFileSink` renames by this rule and
:mod:`webhook.audit.reader` lists files by it; neither spells the rule out itself.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["rotated_indexes", "rotated_name"]


def rotated_name(path: Path, n: int) -> Path:
    """The ``n``-th rotated file of the log at ``path``: ``audit.log`` -> ``audit.log.<n>``."""
    return path.parent / f"{path.name}.{n}"


def rotated_indexes(path: Path) -> list[int]:
    """The ``n`` of every rotated file of ``path`` that exists, ascending (newest file first).

    Raises :class:`FileNotFoundError` when the folder of ``path`` does not exist.
    """
    prefix = path.name + "."
    return sorted(
        int(name[len(prefix) :])
        for name in os.listdir(path.parent)
        if name.startswith(prefix) and name[len(prefix) :].isdigit()
    )
