"""Which BMC driver talks to a host: the inventory names it (``bmc.driver``), callers get a
:class:`provision.bmc.BmcDriver` and never a concrete class."""

from __future__ import annotations

from inventory.errors import InputError
from inventory.model import Host
from provision.bmc import BmcDriver, IpmiBmc


def driver_for(host: Host, *, timeout: float = 5.0) -> BmcDriver:
    bmc = host.bmc
    if bmc is None:
        raise InputError(f"host '{host.name}' has no bmc in the inventory")
    if bmc.driver == "ipmi":
        # reveal() here and only here: the password goes to the driver, nowhere else.
        return IpmiBmc(host.name, bmc.address, port=bmc.port, user=bmc.username,
                       password=bmc.password.reveal(), timeout=timeout)
    raise InputError(f"host '{host.name}': unknown BMC driver '{bmc.driver}'")
