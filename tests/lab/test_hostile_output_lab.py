"""A hostile host's text reaches the operator's terminal as data (issue 13).

A real OpenSSH server whose every session runs in a mount namespace where /etc/os-release
carries a hostile PRETTY_NAME (window title, clear screen, OSC-8 hyperlink, 8-bit CSI, a bidi
override, rich markup), and whose commands print the same. ``facts``, ``exec``, ``run`` (a
failing step's message quotes the output) and ``runs show`` are run on a pseudo-terminal
(rich tables, the live progress) and on pipes; the captured bytes must hold none of the
sequences raw, and the markup must come out as the literal text it is.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

import pytest

from tests.lab.sshd import METALCHAIN, LocalSshd, SitePath, keygen, mc

pytestmark = pytest.mark.lab

PORT = 20601
HOSTILE = ("Evil \x1b]0;pwned-title\x07\x1b[2J\x1b[H"
           # OSC 8 terminated by BEL: the facts probe's echo would take "\\c" of an ST
           "\x1b]8;;http://evil.example/\x07clickme\x1b]8;;\x07"
           "\x9b31m\u202egnp.exe [link=http://x]L[/link] [red]R[/red] [bold]B")
# Raw forms that must never reach the terminal (rich's own SGR colours and the live display's
# cursor moves are fine: they are ours).
RAW = ("\x1b]", "\x07", "\x1b[2J", "\x1b[H", "\x9b", "\u202e", "\x1b\\")
LITERAL = ("[link=http://x]L[/link]", "[red]R[/red]", "[bold]B")


def _wrapper(work) -> str:
    """A ForceCommand: the session's command in a private mount namespace whose
    /etc/os-release is the hostile one."""
    osr = work / "os-release"
    osr.write_text("ID=debian\nVERSION_ID=12\nPRETTY_NAME=\"" + HOSTILE + "\"\n")
    script = work / "hostile-session"
    script.write_text(
        "#!/bin/sh\n"
        f"exec unshare -m sh -c 'mount --bind {osr} /etc/os-release && "
        "exec sh -c \"$SSH_ORIGINAL_COMMAND\"'\n")
    script.chmod(0o755)
    return f"ForceCommand {script}\n"


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    site = SitePath(root / "site")
    (site / "keys").mkdir(parents=True)
    (site / "playbooks").mkdir()
    work = root / "work"
    work.mkdir()
    pub = keygen(site / "keys" / "id_ed25519")
    sshd = LocalSshd(root / "sshd", pub, ("127.0.0.1",), port=PORT,
                     extra_config=_wrapper(work))
    sshd.start()
    try:
        (site / "inventory.yml").write_text(
            "hosts:\n  evil1:\n    address: 127.0.0.1\n"
            f"    ssh: {{port: {sshd.port}, host_key: \"{sshd.host_pub}\"}}\n")
        (site / "secrets.yml").write_text("{}\n")
        os.chmod(site / "secrets.yml", 0o600)
        (work / "says").write_text(HOSTILE + "\n")
        (site / "playbooks" / "hostile.yml").write_text(f"""\
- name: hostile output
  hosts: evil1
  steps:
    - name: "prints {{{{ 'ok' }}}}"
      command: [cat, "{work}/says"]
    - name: fails quoting the host
      command: [sh, -c, 'cat "$0" >&2; exit 3', "{work}/says"]
""")
        site.sshd = sshd
        site.work = work
        yield site
    finally:
        sshd.stop()


def on_terminal(site, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run metalchain with stdout and stderr on a pseudo-terminal; its exit code and every
    byte it wrote, decoded."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", COLUMNS="300")
    proc = subprocess.Popen([METALCHAIN, "--site", str(site), *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:          # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def assert_data_only(label: str, text: str) -> None:
    for raw in RAW:
        assert raw not in text, (label, repr(raw), text[-3000:])


INVOCATIONS = (
    ("facts", ["facts", "evil1"], 0, True),
    ("exec", ["exec", "evil1", "--", "cat", "{work}/says"], 0, True),
    ("run", ["run", "hostile"], 1, True),
    ("facts-cached", ["facts", "evil1", "--cached"], 0, True),
    ("inventory-show", ["inventory", "show", "evil1"], 0, False),
)


def test_hostile_text_is_printed_as_data(hostile_site):
    site, work = hostile_site, hostile_site.work
    # The host really is hostile: its PRETTY_NAME arrives whole.
    r = mc(site, "facts", "evil1", "--json")
    assert r.returncode == 0, r.stderr
    pretty = json.loads(r.stdout)["hosts"]["evil1"]["os_pretty"]
    assert pretty == HOSTILE, repr(pretty)
    for label, args, want, literal in INVOCATIONS:
        args = [a.replace("{work}", str(work)) for a in args]
        code, text = on_terminal(site, *args)
        assert code == want, (label, code, text[-3000:])
        assert_data_only(label + " (terminal)", text)
        if literal:
            for lit in LITERAL:
                assert lit in text, (label, lit, text[-3000:])
            assert "\\x1b]0;pwned-title\\x07" in text, (label, text[-3000:])
        piped = mc(site, *args)
        assert piped.returncode == want, (label, piped.stderr[-2000:])
        assert_data_only(label + " (pipe)", piped.stdout + piped.stderr)
    # The run's journal, shown again, and with --debug (log lines quote host output).
    # --json: the same values, as JSON escapes (inert on a terminal).
    assert "\\u001b]0;pwned-title\\u0007" in r.stdout and "\\u009b31m" in r.stdout
    assert "\\u202e" in r.stdout
    assert_data_only("facts --json", r.stdout + r.stderr)
    code, text = on_terminal(site, "--debug", "runs", "list")
    assert code == 0 and "\x1b]" not in text
    uid = mc(site, "runs", "list", "--json")
    run_uid = json.loads(uid.stdout)["runs"][0]["uid"]
    for args in (["runs", "show", run_uid], ["--debug", "exec", "evil1", "--", "sh", "-c",
                                              f"cat {work}/says >&2; exit 5"]):
        code, text = on_terminal(site, *args)
        assert code in (0, 1), (args, code, text[-2000:])
        assert_data_only(" ".join(args), text)
