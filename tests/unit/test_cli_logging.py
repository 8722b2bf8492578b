"""The CLI's logging: paramiko's own tracebacks stay off the terminal unless --debug."""

from __future__ import annotations

import logging

import pytest

from orchestrate.cli import _configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_logging():
    root, pm = logging.getLogger(), logging.getLogger("paramiko")
    saved = (root.handlers[:], root.level, pm.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    pm.setLevel(saved[2])


def test_a_failed_banner_logged_by_paramiko_is_not_printed(restore_logging, capsys):
    _configure_logging(debug=False)
    logging.getLogger("paramiko.transport").error("Error reading SSH protocol banner")
    logging.getLogger("metalchain").warning("a warning of ours")
    err = capsys.readouterr().err
    assert "SSH protocol banner" not in err and "a warning of ours" in err


def test_with_debug_paramiko_is_heard(restore_logging, capsys):
    _configure_logging(debug=True)
    logging.getLogger("paramiko.transport").error("Error reading SSH protocol banner")
    assert "SSH protocol banner" in capsys.readouterr().err
