"""Pinned SSH host keys."""

from __future__ import annotations

import time

from sqlalchemy import insert, select, update

from inventory.errors import InputError
from inventory.state.audit import write_audit
from inventory.state.base import StoreBase
from inventory.state.schema import host_keys, nodes


class KeysMixin(StoreBase):
    def pin_host_key(self, name: str, public_key: str, source: str) -> None:
        """Pin ``public_key`` ('TYPE BASE64') for ``name``; replaces a key of the same type."""
        parts = public_key.split()
        if len(parts) < 2:
            raise InputError(f"host '{name}': not an SSH public key line")
        key_type, key_b64 = parts[0], parts[1]
        now = time.time()
        with self._write(f"host key {key_type} of '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            existing = conn.execute(select(host_keys.c.id).where(
                host_keys.c.node_id == node_id, host_keys.c.key_type == key_type)).first()
            if existing is None:
                conn.execute(insert(host_keys).values(
                    node_id=node_id, key_type=key_type, public_key=key_b64, source=source,
                    pinned_at=now))
            else:
                conn.execute(update(host_keys).where(host_keys.c.id == existing[0]).values(
                    public_key=key_b64, source=source, pinned_at=now))
            write_audit(conn, "metalchain", "pin_host_key", name,
                        {"key_type": key_type, "source": source})

    def host_keys_of(self, name: str) -> list[str]:
        """Pinned keys of ``name`` as 'TYPE BASE64' lines."""
        with self._read() as conn:
            rows = conn.execute(
                select(host_keys.c.key_type, host_keys.c.public_key)
                .join(nodes, nodes.c.id == host_keys.c.node_id)
                .where(nodes.c.name == name).order_by(host_keys.c.key_type)).all()
        return [f"{t} {k}" for t, k in rows]
