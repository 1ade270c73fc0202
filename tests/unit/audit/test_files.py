"""Unit tests for webhook.audit.files: the one naming rule for the decision log's rotated files."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.audit.files import rotated_indexes, rotated_name


def test_rotated_name_appends_the_index_next_to_the_log(tmp_path: Path) -> None:
    assert rotated_name(tmp_path / "audit.log", 1) == tmp_path / "audit.log.1"
    assert rotated_name(tmp_path / "audit.log", 12) == tmp_path / "audit.log.12"
    assert rotated_name(Path("audit.log"), 3) == Path("audit.log.3")


def test_rotated_indexes_lists_only_numbered_files_of_this_log_ascending(tmp_path: Path) -> None:
    for name in [
        "audit.log",
        "audit.log.10",
        "audit.log.2",
        "audit.log.1",
        "audit.log.old",
        "audit.log.",
        "other.log.3",
    ]:
        (tmp_path / name).write_text("")
    (tmp_path / "audit.log.4").mkdir()  # the name is what counts, as for the writer's renames
    assert rotated_indexes(tmp_path / "audit.log") == [1, 2, 4, 10]
    assert rotated_indexes(tmp_path / "other.log") == [3]
    assert rotated_indexes(tmp_path / "absent.log") == []


def test_rotated_indexes_of_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rotated_indexes(tmp_path / "missing" / "audit.log")
