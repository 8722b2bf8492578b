"""Which nodes `metalchain provision` may start, and the timings it reports."""

from __future__ import annotations

import pytest

from inventory.errors import InputError
from inventory.model import Bmc, Host, Provisioning
from inventory.secrets import Secret
from inventory.state import StateStore
from provision import lifecycle as lc
from provision.provisioner import check_startable, timings

pytestmark = pytest.mark.unit

NODE = Host(name="n1", address="10.0.0.11", groups=(),
            bmc=Bmc(address="127.0.0.1", username="a", password=Secret("x")),
            provision=Provisioning(mac="52:54:00:00:00:01", ip="10.0.0.11"))
BARE = Host(name="h1", address="10.0.0.12", groups=())


@pytest.mark.parametrize("host,state,retry,force,overdue,error", [
    (NODE, None, False, False, False, None),
    (NODE, lc.ENROLLED, False, False, False, None),
    (NODE, lc.ACTIVE, False, False, False, "needs --force"),
    (NODE, lc.ACTIVE, False, True, False, None),
    (NODE, lc.FAILED, False, False, False, "use --retry"),
    (NODE, lc.FAILED, True, False, False, None),
    (NODE, lc.MAINTENANCE, True, True, False, "in maintenance"),
    (NODE, lc.INSTALLING, True, True, False, "already being provisioned"),
    (NODE, lc.INSTALLING, False, False, True, None),
    (BARE, None, False, False, False, "needs bmc and provision.mac"),
])
def test_check_startable(host, state, retry, force, overdue, error):
    if error is None:
        check_startable(host, state, retry=retry, force=force, overdue=overdue)
    else:
        with pytest.raises(InputError, match=error):
            check_startable(host, state, retry=retry, force=force, overdue=overdue)


def test_timings_count_from_the_last_power_on(tmp_path):
    store = StateStore.open_file(tmp_path / "s.db")
    for to in (lc.ENROLLED, lc.POWERING_ON, lc.FAILED, lc.POWERING_ON, lc.PXE_BOOTING):
        store.set_node_state("n1", to, "test")
    t = timings(store, "n1")
    assert list(t) == [lc.POWERING_ON, lc.PXE_BOOTING]
    assert t[lc.POWERING_ON] == 0.0 and t[lc.PXE_BOOTING] >= 0.0
    assert timings(store, "never") == {}
