"""Each lab's BMC ports start at a place of their own (from its netns name): two labs set up
at once, or one whose BMC is down a while, do not pick each other's ports."""

from __future__ import annotations

import pytest

from lab.lab import BMC_PORT_SLOTS, BMC_PORT_STRIDE, FIRST_BMC_PORT, first_bmc_port

pytestmark = pytest.mark.unit

# The netns names of the test modules' labs are hashes of their directories; any names do.
NAMES = [f"mclab-{i:06x}" for i in range(0, 4000, 37)]


def test_the_first_port_is_stable_in_range_and_on_a_stride():
    for name in NAMES:
        port = first_bmc_port(name)
        assert port == first_bmc_port(name)
        assert FIRST_BMC_PORT <= port < FIRST_BMC_PORT + BMC_PORT_STRIDE * BMC_PORT_SLOTS
        assert (port - FIRST_BMC_PORT) % BMC_PORT_STRIDE == 0
        assert port < 32768   # below the kernel's ephemeral range


def test_labs_spread_over_the_slots():
    starts = {first_bmc_port(n) for n in NAMES}
    assert len(starts) >= 0.7 * len(NAMES)    # 109 names into 200 slots
