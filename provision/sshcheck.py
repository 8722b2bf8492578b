"""Does SSH answer with the pinned host key? The test that makes a node ``active``.

Only the key exchange is done — no login: the point is that the host proves it holds the
private key the controller generated for it. Nothing here trusts an unknown key.
"""

from __future__ import annotations

import base64
import hmac
import socket

import paramiko


def ssh_answers_with(address: str, pinned: str, *, port: int = 22,
                     timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "") if ``address`` speaks SSH with ``pinned`` ('TYPE BASE64'), else why not."""
    parts = pinned.split()
    if len(parts) < 2:
        return False, "pinned key is not 'TYPE BASE64'"
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        return False, f"no SSH at {address}:{port}: {exc.strerror or exc}"
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.get_security_options().key_types = [parts[0]]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        offered = base64.b64decode(key.get_base64())
        if key.get_name() == parts[0] and hmac.compare_digest(offered,
                                                              base64.b64decode(parts[1])):
            return True, ""
        return False, f"{address} offered a different {key.get_name()} host key"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return False, f"SSH handshake with {address} failed: {exc or exc.__class__.__name__}"
    finally:
        transport.close()
