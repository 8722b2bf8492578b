"""What `apply` prints after a real run over real SSH (one OpenSSH server on loopback
addresses, each an inventory host): the resource counts come from each resource's outcome,
and a diff's header is not a diff line."""

from __future__ import annotations

import json

import pytest

from tests.lab.sshd import mc

pytestmark = pytest.mark.lab

HOSTS = ("h01", "h02", "h03")
FILES = 4

RECIPE = "- directory: {path: '{{ work }}/{{ inventory_hostname }}', mode: '0755'}\n" + "".join(
    f"- file: {{path: '{{{{ work }}}}/{{{{ inventory_hostname }}}}/f{i}', "
    f"content: \"line {i}\\n\", mode: '0644'}}\n" for i in range(1, FILES + 1))


def test_apply_summary_counts_and_diff_headers(lab_site):
    role = lab_site / "playbooks" / "roles" / "demo"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text(RECIPE)
    work = lab_site.work
    target = ",".join(HOSTS)
    per_host = FILES + 1

    first = mc(lab_site, "apply", "--role", "demo", target, "-e", f"work={work}")
    assert first.returncode == 0, first.stdout + first.stderr
    total = per_host * len(HOSTS)
    assert first.stdout.splitlines()[-2:] == [
        f"run {first.stdout.split('run ')[-1].split(':')[0]}: 3 hosts: 3 changed",
        f"changed {total} of {total} resources on 3 hosts"], first.stdout

    (work / "h02" / "f3").write_text("edited by hand\n")
    check = mc(lab_site, "apply", "--role", "demo", target, "-e", f"work={work}",
               "--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    out = check.stdout.splitlines()
    assert out[-1] == f"would change 1 of {total} resources on 3 hosts", check.stdout
    assert "\x1b[" not in check.stdout          # not a terminal: no colour
    headers = [t for t in out if t.startswith("== ")]
    assert headers == [f"== h02 demo/file:{work}/h02/f3: changed "
                       f"({role / 'recipe.yml'}:4) =="], check.stdout
    at = out.index(headers[0])
    assert out[at + 2].startswith("--- ") and out[at + 3].startswith("+++ "), check.stdout
    assert "-edited by hand" in out and "+line 3" in out

    # The JSON document carries the same counts.
    doc = json.loads(mc(lab_site, "apply", "--role", "demo", target, "-e", f"work={work}",
                        "--check", "--json").stdout)
    assert doc["items"] == {"kind": "resource", "total": total, "hosts": 3, "ok": total - 1,
                            "changed": 1, "unknown": 0, "failed": 0, "skipped": 0}
