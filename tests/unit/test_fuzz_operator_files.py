"""Every parser of operator files under hypothesis: mutated example files and raw bytes.

The property (tests/operator_fuzz.py ``judge``): a result, or metalchain's own error naming
file:line; no other exception, no hang, bounded memory. CI runs a fixed, derandomized
handful per parser; ``bench/fuzz.py --minutes N`` runs the same properties at full size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.operator_fuzz import judge, targets

pytestmark = pytest.mark.unit

TARGETS = targets()
CI = settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_parser_keeps_the_property(target):
    @CI
    @given(data=target.inputs())
    def check(data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as root:
            verdict = judge(target, Path(root), data, seconds=5, trace_memory=False)
            assert verdict.ok, (verdict.outcome, verdict.detail, data[:2000])

    check()


def test_the_property_catches_a_parser_that_breaks_it(tmp_path):
    """judge() is not a test that cannot fail: a foreign exception, a message without
    file:line and a hang are each reported."""
    from dataclasses import replace

    from inventory.errors import InputError

    target = TARGETS[0]

    def boom(_root, _data):
        raise KeyError("x")

    def lineless(_root, _data):
        raise InputError("something is wrong")

    def hang(_root, _data):
        while True:
            pass

    assert judge(replace(target, call=boom), tmp_path, b"").outcome == "unhandled"
    assert judge(replace(target, call=lineless), tmp_path, b"").outcome == "no file:line"
    assert judge(replace(target, call=hang), tmp_path, b"", seconds=0.2).outcome == "hang"
    assert judge(target, tmp_path / "s", (Path(__file__).parents[2] / "orchestrate" /
                                         "scaffold" / "inventory.yml").read_bytes()).ok
