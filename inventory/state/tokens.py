"""One-time deploy tokens (only their hashes are stored)."""

from __future__ import annotations

import hmac
import secrets
import time

from sqlalchemy import insert, select, update

from inventory.state.base import StoreBase, _sha256
from inventory.state.schema import deploy_tokens, nodes


class TokensMixin(StoreBase):
    def issue_deploy_token(self, name: str, ttl: float) -> str:
        """A fresh one-time token for ``name``'s next deployment; earlier ones are revoked.

        Only the token's SHA-256 is stored: a copy of the database does not let anyone
        impersonate an installer.
        """
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._write(f"deploy token of '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.node_id == node_id, deploy_tokens.c.status == "active"
            ).values(status="revoked", ended_at=now))
            conn.execute(insert(deploy_tokens).values(
                node_id=node_id, token_sha256=_sha256(token), status="active", issued_at=now,
                expires_at=now + ttl))
        return token

    def check_deploy_token(self, name: str, token: str) -> bool:
        """True if ``token`` is ``name``'s active, unexpired token."""
        with self._read() as conn:
            row = conn.execute(select(deploy_tokens.c.token_sha256, deploy_tokens.c.expires_at)
                               .join(nodes, nodes.c.id == deploy_tokens.c.node_id)
                               .where(nodes.c.name == name,
                                      deploy_tokens.c.status == "active")).first()
        if row is None or row.expires_at < time.time():
            return False
        return hmac.compare_digest(row.token_sha256, _sha256(token))

    def spend_deploy_token(self, name: str, token: str) -> bool:
        """Spend ``token`` (done or failed was reported); False if it was not active."""
        with self._write(f"deploy token of '{name}'") as conn:
            res = conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.token_sha256 == _sha256(token),
                deploy_tokens.c.status == "active",
                deploy_tokens.c.expires_at >= time.time(),
                deploy_tokens.c.node_id == select(nodes.c.id).where(
                    nodes.c.name == name).scalar_subquery(),
            ).values(status="spent", ended_at=time.time()))
            return res.rowcount == 1

    def revoke_deploy_tokens(self, name: str) -> None:
        with self._write(f"deploy tokens of '{name}'") as conn:
            conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.status == "active",
                deploy_tokens.c.node_id == select(nodes.c.id).where(
                    nodes.c.name == name).scalar_subquery(),
            ).values(status="revoked", ended_at=time.time()))
