"""SIGUSR1's log reopen (cli/logreopen.py): a new file is used after a rename,
and a new file that cannot be opened leaves the old one in use (no crash)."""

from __future__ import annotations

import logging

import pytest

from pycopy_engine.cli.logreopen import reopen_logs


@pytest.fixture
def file_log(tmp_path):
    path = tmp_path / "tcpcopy.log"
    handler = logging.FileHandler(path)
    log = logging.getLogger("pycopy")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    yield log, path
    log.removeHandler(handler)
    log.setLevel(old_level)
    handler.close()


def test_reopen_follows_a_rename(file_log):
    log, path = file_log
    log.info("before")
    path.rename(path.with_suffix(".log.1"))
    assert reopen_logs() == (1, [])
    log.info("after")
    assert path.read_text() == "after\n"
    assert path.with_suffix(".log.1").read_text() == "before\n"


def test_an_unopenable_new_file_keeps_the_old_one(file_log):
    log, path = file_log
    log.info("before")
    path.rename(path.with_suffix(".log.1"))
    path.mkdir()  # cannot be opened for writing (like a root-owned 0640 file for a non-root service)
    n, errors = reopen_logs()
    assert n == 0 and len(errors) == 1 and str(path) in errors[0]
    log.info("after")  # still logged, to the old (renamed) file
    assert path.with_suffix(".log.1").read_text() == "before\nafter\n"
