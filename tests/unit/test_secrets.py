from __future__ import annotations

import json
import logging
import pickle

import pytest

from inventory.errors import SecretError
from inventory.secrets import Secret, SecretStore
from orchestrate.output import to_json

pytestmark = pytest.mark.unit


def test_secret_masks_everywhere(caplog):
    s = Secret("hunter2", "secret:x")
    assert str(s) == "***"
    assert "hunter2" not in repr(s)
    assert f"{s}" == "***" and f"{s:>10}" == "***"
    assert "hunter2" not in to_json({"pw": s, "nested": [s]})
    assert json.loads(to_json({"pw": s}))["pw"] == "***"
    logging.getLogger("t").warning("password is %s", s)
    assert "hunter2" not in caplog.text
    assert s.reveal() == "hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_store_resolves_file_and_env():
    store = SecretStore({"a": "1"}, environ={"V": "2"})
    assert store.resolve({"secret": "a"}).reveal() == "1"
    assert store.resolve({"env": "V"}).reveal() == "2"
    with pytest.raises(SecretError, match="'b' is not defined"):
        store.resolve({"secret": "b"})
    with pytest.raises(SecretError, match="must be"):
        store.resolve({"secret": "a", "env": "V"})
