"""Does SSH answer with the pinned host key? The test that makes a node ``active``.

Only the key exchange is done — no login: the exchange is signed with the host key, so a match
means the host proves it holds the private key the controller generated (or pinned) for it.
Nothing here trusts an unknown key.

This is the one host-key probe of the project (the lab's fleet uses it too), with one meaning:

* a pinned key is an OpenSSH public key line ``TYPE BASE64 [comment]``; the base64 must be
  strict (no stray characters, correct padding) and the key blob must name the same TYPE;
* the server must offer exactly that key: same type, same bytes (compared in constant time);
* an ``ssh-rsa`` key is checked with the SHA-2 signature algorithms (``rsa-sha2-512``,
  ``rsa-sha2-256``): current OpenSSH servers refuse SHA-1 ``ssh-rsa`` signatures, and so does
  paramiko >= 4, so asking for ``ssh-rsa`` would fail a host that holds the pinned key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
from dataclasses import dataclass

import paramiko

# Host key algorithms that prove a key of each type (a pinned type not listed proves itself).
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}

MATCH, MISMATCH, NO_ANSWER, INVALID_PIN = "match", "mismatch", "no_answer", "invalid_pin"


@dataclass(frozen=True)
class PinnedKey:
    key_type: str
    blob: bytes

    @property
    def algorithms(self) -> tuple[str, ...]:
        return _ALGORITHMS.get(self.key_type, (self.key_type,))

    def matches(self, offered_blob: bytes) -> bool:
        """True if the server's key (its wire-format blob) is this key."""
        return hmac.compare_digest(offered_blob, self.blob)


def key_fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (what ``ssh-keygen -lf`` prints).

    >>> key_fingerprint(b"")
    'SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU'
    """
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _blob_type(blob: bytes) -> str | None:
    """The key type a public key blob names (its first SSH string), or None if malformed."""
    if len(blob) < 4:
        return None
    n = int.from_bytes(blob[:4], "big")
    if n == 0 or len(blob) < 4 + n:
        return None
    try:
        return blob[4:4 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_pinned_key(line: str) -> PinnedKey:
    """``'TYPE BASE64 [comment]'`` -> PinnedKey; ValueError saying what is wrong.

    >>> parse_pinned_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA" + "A" * 43).key_type
    'ssh-ed25519'
    """
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("pinned key is not 'TYPE BASE64'")
    key_type, b64 = parts[0], parts[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("pinned key's base64 is not valid") from None
    named = _blob_type(blob)
    if named != key_type:
        raise ValueError(f"pinned key says {key_type} but its data is "
                         f"{named or 'not an SSH public key'}")
    return PinnedKey(key_type, blob)


@dataclass(frozen=True)
class ProbeResult:
    verdict: str      # MATCH, MISMATCH (a different key), NO_ANSWER (yet), INVALID_PIN
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == MATCH


def probe_host_key(address: str, pinned: str, *, port: int = 22,
                   timeout: float = 3.0) -> ProbeResult:
    """Complete an SSH key exchange with ``address:port`` and compare the server's host key
    with ``pinned``. Every wait is bounded by ``timeout``; never raises for what the network
    or the server does."""
    try:
        want = parse_pinned_key(pinned)
    except ValueError as exc:
        return ProbeResult(INVALID_PIN, str(exc))
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        return ProbeResult(NO_ANSWER, f"no SSH at {address}:{port}: {exc.strerror or exc}")
    try:
        transport = paramiko.Transport(sock)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        sock.close()
        return ProbeResult(NO_ANSWER, f"SSH with {address}:{port} failed: "
                                      f"{exc or exc.__class__.__name__}")
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        try:
            transport.get_security_options().key_types = list(want.algorithms)
        except ValueError:
            return ProbeResult(INVALID_PIN, f"host key type {want.key_type} is not supported")
        pinned_fp = f"{want.key_type} {key_fingerprint(want.blob)}"
        try:
            transport.start_client(timeout=timeout)
        except paramiko.ssh_exception.IncompatiblePeer:
            # The server holds no key of the pinned type: another host, or a reinstalled one.
            return ProbeResult(MISMATCH, f"{address}:{port} offers no {want.key_type} host key "
                                         f"(pinned: {pinned_fp})")
        key = transport.get_remote_server_key()
        if want.matches(key.asbytes()):
            return ProbeResult(MATCH)
        return ProbeResult(MISMATCH, f"{address}:{port} offered host key {key.get_name()} "
                                     f"{key_fingerprint(key.asbytes())}, pinned {pinned_fp}")
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return ProbeResult(NO_ANSWER, f"SSH handshake with {address}:{port} failed: "
                                      f"{exc or exc.__class__.__name__}")
    finally:
        transport.close()
        sock.close()


def ssh_answers_with(address: str, pinned: str, *, port: int = 22,
                     timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "") if ``address`` speaks SSH with ``pinned`` ('TYPE BASE64'), else why not."""
    result = probe_host_key(address, pinned, port=port, timeout=timeout)
    return result.ok, result.reason
