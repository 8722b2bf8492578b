"""`lab up` reads the site's secrets file; a broken one is a one-line error that names the
file and line and never quotes it (yaml's own messages quote the offending line)."""

from __future__ import annotations

import pytest

from inventory.errors import LabError
from lab.lab import Lab, LabConfig, NodeConfig

pytestmark = pytest.mark.unit

CANARY = "CANARY-lab-2a9e"


def test_malformed_secrets_file_error_does_not_quote_it(tmp_path):
    (tmp_path / "secrets.yml").write_text(f'bmc-node1: ok\nbmc-node2: "{CANARY}\n: [\n')
    config = LabConfig(name="t", netns="t", ipv4="10.9.0.0/24", ipv6="fd00::/64",
                       nodes=[NodeConfig("node1", "52:54:00:00:00:01", "10.9.0.11", "t0", 6230)])
    with pytest.raises(LabError) as info:
        Lab(tmp_path).ensure_secrets(config)
    assert CANARY not in str(info.value)
    assert "secrets.yml:" in str(info.value) and "not valid YAML" in str(info.value)
