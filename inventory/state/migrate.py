"""Creating and upgrading the schema."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from inventory.errors import StateError
from inventory.state.base import StoreBase, _safe_url
from inventory.state.schema import SCHEMA_VERSION, meta, metadata


class SchemaMixin(StoreBase):
    def _migrate(self) -> None:
        with self._write() as conn:
            metadata.create_all(conn)
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")
                               ).first()
            if row is None:
                conn.execute(insert(meta).values(key="schema_version",
                                                 value=str(SCHEMA_VERSION)))
                return
            found = int(row[0])
        if found > SCHEMA_VERSION:
            raise StateError(f"the state store {_safe_url(self.url)} has schema version "
                             f"{found}, newer than this metalchain ({SCHEMA_VERSION}); "
                             "upgrade metalchain")
        if found < SCHEMA_VERSION:
            with self._write() as conn:
                # create_all above already added the tables new in later versions (1 -> 2:
                # deploy_tokens; 2 -> 3: facts; 3 -> 4: owed_handlers, drift); steps that
                # alter existing tables go here.
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(
                    value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(meta.c.value).where(
                meta.c.key == "schema_version")).scalar_one())
