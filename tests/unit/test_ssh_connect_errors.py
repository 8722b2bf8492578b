"""Unit tests of what a failed SSH connect is called: the real cause, never a guess."""

from __future__ import annotations

import errno

import paramiko
import pytest

from configure.ssh import connect_failure

pytestmark = pytest.mark.unit


def wrapped(*errors: OSError) -> OSError:
    """What paramiko raises: one error per address tried."""
    addrs = [("10.77.0.11", 22), ("fd00::11", 22, 0, 0)]
    by_address = dict(zip(addrs[:len(errors)], errors, strict=True))
    return paramiko.ssh_exception.NoValidConnectionsError(by_address)


@pytest.mark.parametrize(("exc", "words", "not_words"), [
    (wrapped(OSError(errno.EHOSTUNREACH, "No route to host")), "no route to host", "refused"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host", "refused"),
    (wrapped(OSError(errno.ECONNREFUSED, "Connection refused")), "connection refused",
     "route"),
    (wrapped(OSError(errno.ENETUNREACH, "Network is unreachable")), "network unreachable",
     "refused"),
    (TimeoutError("timed out"), "no answer within 10 s", "refused"),
    (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "no answer within 10 s",
     "refused"),
    (paramiko.SSHException("Error reading SSH protocol banner"), "protocol banner", "refused"),
])
def test_connect_errors_name_the_real_cause(exc: BaseException, words: str,
                                            not_words: str) -> None:
    reason = connect_failure(exc, 10.0)
    assert words in reason and not_words not in reason, reason


def test_two_address_families_failing_differently_name_both() -> None:
    reason = connect_failure(wrapped(OSError(errno.ECONNREFUSED, "Connection refused"),
                                     OSError(errno.EHOSTUNREACH, "No route to host")), 5)
    assert "connection refused" in reason and "no route to host" in reason


def test_an_unreachable_host_is_not_called_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport's error for a node without an address ("No route to host")."""
    from configure.ssh import SshConnection, SshTarget
    from inventory.errors import TransportError

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise wrapped(OSError(errno.EHOSTUNREACH, "No route to host"))

    monkeypatch.setattr(paramiko.SSHClient, "connect", unreachable)
    conn = SshConnection(SshTarget("node1", "10.77.0.11", ()), connect_timeout=3)
    with pytest.raises(TransportError) as err:
        conn.connect()
    message = str(err.value)
    assert message.startswith("host 'node1' (10.77.0.11:22): cannot connect: no route to host")
    assert "refused" not in message
