"""A guest's SSH host key, generated on the controller (the guest never makes its own).

The public half is pinned in the state store before the guest first boots, so its first SSH
connection is verified like any other host's. The private half exists only in memory here and
in the guest's seed on its hypervisor; this object never prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class HostKeyPair:
    public: str                                   #: 'ssh-ed25519 BASE64'
    private: str = field(repr=False)              #: OpenSSH private key text (a secret)

    def __str__(self) -> str:
        return self.public


def new_host_key() -> HostKeyPair:
    """A fresh ed25519 host key pair.

    >>> new_host_key().public.startswith("ssh-ed25519 ")
    True
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return HostKeyPair(public=" ".join(public.split()[:2]), private=private)
