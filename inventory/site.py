"""A site: the directory holding an inventory, its secrets, playbooks and state.

Found by ``--site DIR``, else ``$METALCHAIN_SITE``, else the current directory. Layout::

    SITE/metalchain.yml     optional settings: inventory, secrets, state (paths or a URL), ssh_key
    SITE/keys/id_ed25519    the controller's SSH key
    SITE/runs/RUN.jsonl     event log of each run
    SITE/inventory.yml      or SITE/inventory/*.yml
    SITE/secrets.yml        mode 0600
    SITE/playbooks/
    SITE/state/metalchain.db
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inventory.errors import InputError, InventoryError, MetalchainError
from inventory.loader import inventory_files, load_inventory
from inventory.model import Inventory
from inventory.secrets import Masker, SecretStore, env_refs_in
from inventory.state import StateStore
from inventory.yamlsource import read_yaml_file
from runtime.private import private_dir

SETTINGS_FILE = "metalchain.yml"
SETTINGS_KEYS = ("inventory", "secrets", "state", "ssh_key", "boot", "mirror", "monitor",
                 "role_sources")
# Settings that are mappings, validated by the stage that owns them (boot: provision/,
# mirror: configure/, monitor: monitor/).
MAPPING_SETTINGS = ("boot", "mirror", "monitor")
# Settings that are lists of strings (role_sources: directories outside the roles that a
# role's source: may name; configure/roles.py reads it).
LIST_SETTINGS = ("role_sources",)


def _usable_path(text: str) -> bool:
    """A path the OS can look up (``Path.exists`` raises for a name of more than 255 bytes)."""
    raw = text.encode("utf-8", "surrogatepass")
    return bool(raw) and b"\0" not in raw and len(raw) < 4096 and \
        all(len(part) <= 255 for part in raw.split(b"/"))


def find_site_dir(option: str | None, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = option or env.get("METALCHAIN_SITE") or os.getcwd()
    return Path(raw).expanduser().resolve()


@dataclass
class Site:
    root: Path
    inventory_path: Path
    secrets_path: Path
    state_url: str
    ssh_key_path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    settings_file: Path | None = None
    _inventory: Inventory | None = field(default=None, repr=False)
    _secrets: SecretStore | None = field(default=None, repr=False)
    _state: StateStore | None = field(default=None, repr=False)
    _env_refs: set[str] | None = field(default=None, repr=False)
    #: the environment the site resolves ``{env: VAR}`` secrets from: a copy taken when it
    #: was opened, so :meth:`withhold_env_secrets` can take them out of the process's own
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)
    _withheld: bool = field(default=False, repr=False)
    _taken: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: Path, environ: dict[str, str] | None = None) -> Site:
        env = os.environ if environ is None else environ
        if not root.is_dir():
            raise InputError(f"site directory {root} does not exist "
                             "(create one with: metalchain init DIR)")
        settings: dict[str, Any] = {}
        settings_file = root / SETTINGS_FILE
        if settings_file.exists():
            data = read_yaml_file(settings_file)
            if data is not None and not isinstance(data, dict):
                raise InventoryError("site settings must be a mapping", file=str(settings_file),
                                     line=1)
            for key in data or {}:
                if key not in SETTINGS_KEYS:
                    raise InventoryError(f"unknown key '{key}'; allowed: "
                                         f"{', '.join(SETTINGS_KEYS)}", file=str(settings_file),
                                         line=data.line_of(key))
                want = dict if key in MAPPING_SETTINGS else list if key in LIST_SETTINGS \
                    else str
                if not isinstance(data[key], want) or (want is list and not all(
                        isinstance(v, str) and v for v in data[key])):
                    kind = {dict: "mapping", list: "list of strings", str: "string"}[want]
                    raise InventoryError(f"{key} must be a {kind}", file=str(settings_file),
                                         line=data.line_of(key))
                if want is str and "://" not in data[key] and not _usable_path(data[key]):
                    raise InventoryError(f"{key} must be a path (no NUL byte, names of at "
                                         "most 255 bytes)", file=str(settings_file),
                                         line=data.line_of(key))
            settings = dict(data or {})
        if "inventory" in settings:
            inv = root / settings["inventory"]
        elif (root / "inventory").is_dir():
            inv = root / "inventory"
        else:
            inv = root / "inventory.yml"
        if not inv.exists() and "inventory" in settings:
            raise InventoryError(f"inventory: {inv} does not exist", file=str(settings_file),
                                 line=data.line_of("inventory"))
        if not inv.exists():
            raise InputError(f"{root} is not a metalchain site: no inventory.yml or inventory/ "
                             "(use --site DIR or $METALCHAIN_SITE, or create one with "
                             "metalchain init DIR)")
        secrets = root / settings.get("secrets", "secrets.yml")
        state = env.get("METALCHAIN_STATE_URL") or settings.get("state") or "state/metalchain.db"
        if "://" not in state:
            path = root / state
            state = f"sqlite:///{path}"
        key = root / settings.get("ssh_key", "keys/id_ed25519")
        return cls(root=root, inventory_path=inv, secrets_path=secrets, state_url=state,
                   ssh_key_path=key, settings=settings, settings_file=settings_file,
                   environ=dict(env))

    @property
    def secrets(self) -> SecretStore:
        if self._secrets is None:
            self._secrets = SecretStore.load(self.secrets_path, self.environ)
        return self._secrets

    def masker(self) -> Masker:
        """A :class:`Masker` of every secret value this site can know: the secrets file's
        values and those of the environment variables its inventory references (``{env:
        VAR}``), whether or not the inventory loaded (an inventory with an error is scanned
        as raw YAML). Never raises: it is what error and log output is scrubbed with."""
        values: list[str] = []
        store = self._secrets
        if store is None:
            try:
                store = self.secrets
            except (MetalchainError, OSError):
                store = None
        if store is not None:
            values += store.known_values()
        values += [self.environ[v] for v in self._referenced_env() if self.environ.get(v)]
        return Masker(values)

    def withhold_env_secrets(self) -> list[str]:
        """Take the environment variables the inventory references as secrets (``{env:
        VAR}``) out of this process's environment, so that no process it starts (ssh,
        pytest, Prometheus, gpg, a BMC worker) inherits them; the site keeps its copy
        (resolution, masking, a reload). What was taken, to give back with
        :meth:`restore_env_secrets` when the command is done (in-process callers)."""
        self._withheld = True
        gone = {v: os.environ[v] for v in sorted(self._referenced_env()) if v in os.environ}
        for name in gone:
            del os.environ[name]     # also unsetenv(): children started by any means
        self._taken = {**gone, **self._taken}
        return gone

    def restore_env_secrets(self) -> None:
        """Put back what :meth:`withhold_env_secrets` took (values set since are kept)."""
        for name, value in self._taken.items():
            os.environ.setdefault(name, value)
        self._taken = {}

    def _referenced_env(self) -> set[str]:
        if self._env_refs is None:
            names: set[str] = set()
            try:
                files = inventory_files(self.inventory_path)
            except (MetalchainError, OSError):
                files = []
            for f in files:
                try:
                    names |= env_refs_in(read_yaml_file(f))
                except (MetalchainError, OSError, ValueError):
                    continue
            self._env_refs = names
        return self._env_refs

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = load_inventory(self.inventory_path, self.secrets)
        return self._inventory

    def reload_inventory(self) -> Inventory:
        """Read the inventory (and secrets) again, e.g. on SIGHUP to a long-running serve."""
        self._secrets = None
        self._inventory = None
        self._env_refs = None
        inv = self.inventory
        if self._withheld:
            self.withhold_env_secrets()
        return inv

    @property
    def state(self) -> StateStore:
        if self._state is None:
            if self.state_url.startswith("sqlite:///"):
                private_dir(Path(self.state_url.removeprefix("sqlite:///")).parent)
            self._state = StateStore(self.state_url)
        return self._state

    @property
    def playbooks_dir(self) -> Path:
        return self.root / "playbooks"

    @property
    def runs_dir(self) -> Path:
        """Where each run's JSON-lines event log is kept (``RUN_ID.jsonl``)."""
        return self.root / "runs"

    def private_key(self) -> Path | None:
        """The controller's SSH key, if the site has one (else paramiko's defaults)."""
        return self.ssh_key_path if self.ssh_key_path and self.ssh_key_path.exists() else None

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
