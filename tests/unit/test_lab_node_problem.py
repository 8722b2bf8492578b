"""`lab status` says why a node is unhealthy: the dead process first, then the BMC's symptom."""

from __future__ import annotations

import pytest

from lab.lab import node_problem

pytestmark = pytest.mark.unit

TIMEOUT = "node2 (BMC 127.0.0.1:6232): no answer within 3 s"


@pytest.mark.parametrize(("args", "problem"), [
    (("on", None, 10, 11), None),
    (("off", None, 10, 11), None),
    (("unknown", TIMEOUT, 10, None),
     f"BMC process not running (lab up restarts it); {TIMEOUT}"),
    (("unknown", TIMEOUT, None, None), "BMC process not running (lab up restarts it); QEMU "
                                       f"not running (lab up restarts it); {TIMEOUT}"),
    (("unknown", TIMEOUT, 10, 11), TIMEOUT),
    (("unknown", None, 10, 11), "BMC reported power state 'unknown'"),
    (("on", None, None, 11), "QEMU not running (lab up restarts it)"),
])
def test_node_problem(args, problem):
    assert node_problem(*args) == problem
