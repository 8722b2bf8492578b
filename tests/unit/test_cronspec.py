"""Cron expressions are checked field by field as cron reads them, and ``--every`` says when
cron can only approximate it (``*/7`` restarts at each hour)."""

from __future__ import annotations

import pytest

from inventory.errors import InputError
from orchestrate.cronspec import check_cron, every_to_cron
from orchestrate.schedule import cron_expression, every_warning

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("expression", [
    "*/15 * * * *", "0 3 * * *", "0,30 8-18 * * 1-5", "0-30/10 */2 1,15 * *",
    "0 3 * jan-MAR mon-fri", "0 0 1 DEC sun", "59 23 31 12 7", "0 0 * * 0", "@hourly",
    "@daily", "@reboot", "@WEEKLY", "5 4 * * sat,sun", "*/59 * * * *",
])
def test_valid_expressions_are_accepted(expression):
    assert check_cron(expression) == " ".join(expression.split()).replace("@WEEKLY",
                                                                          "@weekly")


@pytest.mark.parametrize(("expression", "message"), [
    ("60 * * * *", "minute '60' is out of range 0-59"),
    ("* 24 * * *", "hour '24' is out of range 0-23"),
    ("0 0 0 * *", "day of month '0' is out of range 1-31"),
    ("0 0 32 * *", "day of month '32' is out of range 1-31"),
    ("0 0 1 13 *", "month '13' is out of range 1-12"),
    ("0 0 1 0 *", "month '0' is out of range 1-12"),
    ("0 0 * * 8", "day of week '8' is out of range 0-7"),
    ("0 0 * * funday", "day of week 'funday' is not a number 0-7 or sun-sat"),
    ("0 0 * foo *", "month 'foo' is not a number 1-12 or jan-dec"),
    ("0 mon * * *", "hour 'mon' is not a number 0-23"),
    ("*/0 * * * *", "minute '*/0': the step after / must be a number 1-59"),
    ("*/x * * * *", "minute '*/x': the step after / must be"),
    ("5/10 * * * *", "minute '5/10': a step needs * or a range before it"),
    ("* 20-8 * * *", "hour '20-8': the range runs backwards (20 > 8)"),
    ("1,,2 * * * *", "minute '': empty value"),
    ("0 0 * * 1-9", "day of week '9' is out of range 0-7"),
    ("* * *", "--cron must have 5 fields"),
    ("* * * * * *", "--cron must have 5 fields"),
    ("@often", "unknown nickname"),
])
def test_invalid_expressions_name_the_field(expression, message):
    with pytest.raises(InputError) as err:
        check_cron(expression)
    assert message in str(err.value)
    assert str(err.value).startswith("--cron ")


def test_cron_option_is_checked_through_cron_expression():
    with pytest.raises(InputError, match="minute '61' is out of range 0-59"):
        cron_expression(None, "61 * * * *")
    assert cron_expression(None, "0  3 * * *") == "0 3 * * *"


@pytest.mark.parametrize("every,expression", [
    ("1m", "*/1 * * * *"), ("5m", "*/5 * * * *"), ("15m", "*/15 * * * *"),
    ("30m", "*/30 * * * *"), ("1h", "0 */1 * * *"), ("6h", "0 */6 * * *"),
    ("12h", "0 */12 * * *"), ("1d", "0 3 */1 * *"),
])
def test_exact_intervals(every, expression):
    assert every_to_cron(every) == (expression, None)
    assert cron_expression(every, None) == expression
    assert every_warning(every) is None


def test_seven_minutes_is_explained_and_refused():
    expression, why = every_to_cron("7m")
    assert expression == "*/7 * * * *"
    assert why == ("cron cannot run every 7 minutes exactly: */7 restarts at each hour "
                   "(:00, :07, … :56, :00: the last gap is 4 minutes); use 6m or 10m, which "
                   "repeat exactly, or pass --uneven to accept this")
    with pytest.raises(InputError, match=r"^--every 7m: cron cannot run every 7 minutes"):
        cron_expression("7m", None)
    assert cron_expression("7m", None, uneven=True) == "*/7 * * * *"
    assert every_warning("7m") == why


@pytest.mark.parametrize("every,fragment", [
    ("45m", "(:00, :45, :00: the last gap is 15 minutes); use 30m or 1h"),
    ("59m", "the last gap is 1 minute);"),
    ("5h", "(00:00, 05:00, … 20:00, 00:00: the last gap is 4 hours); use 4h or 6h"),
    ("13h", "use 12h or 1d"),
    ("2d", "on the 1st of each month (the 1st, 3rd … 31st, then the 1st"),
    ("7d", "(the 1st, 8th … 29th, then the 1st"),
])
def test_uneven_intervals_are_explained(every, fragment):
    why = every_to_cron(every)[1]
    assert why is not None and fragment in why


@pytest.mark.parametrize("every,message", [
    ("15x", "--every must look like 15m, 2h or 1d"), ("0m", "use 1-59m (or hours: 1h)"),
    ("60m", "use 1-59m"), ("24h", "use 1-23h (or days: 1d)"), ("32d", "use 1-31d"),
])
def test_bad_every(every, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cron_expression(every, None)


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run the metalchain CLI in-process as the console script does: (exit code, output)."""
    from orchestrate.cli import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.fixture
def site(tmp_path):
    from tests.conftest import write_site

    root = write_site(tmp_path / "site", "hosts:\n  web1: {address: 10.0.0.1}\n")
    (root / "playbooks").mkdir()
    (root / "playbooks" / "drift.yml").write_text("- hosts: all\n  steps:\n"
                                                  "    - command: [/bin/true]\n")
    return root


def test_schedule_add_refuses_an_uneven_every_and_installs_nothing(site, tmp_path, capsys):
    cron_dir = tmp_path / "cron.d"
    rc, out = _cli(capsys, "--site", str(site), "schedule", "add", "d", "--playbook", "drift",
                   "--every", "7m", "--cron-dir", str(cron_dir))
    assert rc == 2
    assert "cron cannot run every 7 minutes exactly" in out
    assert not (cron_dir / "metalchain-d").exists()


def test_schedule_add_uneven_warns_and_passes_extra_vars(site, tmp_path, capsys):
    import json

    cron_dir = tmp_path / "cron.d"
    rc, out = _cli(capsys, "--site", str(site), "schedule", "add", "d", "--playbook", "drift",
                   "--every", "7m", "--uneven", "-e", "team=ops east", "-e", "x=1",
                   "--cron-dir", str(cron_dir))
    assert rc == 0, out
    assert "warning: cron cannot run every 7 minutes exactly" in out
    rc, out = _cli(capsys, "--site", str(site), "schedule", "list", "--json", "--cron-dir",
                   str(cron_dir))
    [item] = json.loads(out)["schedules"]
    assert item["when"] == "*/7 * * * *" and item["extra"] == ["team=ops east", "x=1"]


def test_schedule_add_names_the_bad_cron_field(site, tmp_path, capsys):
    rc, out = _cli(capsys, "--site", str(site), "schedule", "add", "d", "--playbook", "drift",
                   "--cron", "0 25 * * *", "--cron-dir", str(tmp_path / "c"))
    assert rc == 2 and "error: --cron '0 25 * * *': hour '25' is out of range 0-23" in out
