"""The click tree as an operator meets it: global options before or after the subcommand,
an example in every command's --help (and each one parses), click's shell completion."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from orchestrate.cli import Context, cli

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"
GLOBAL = ("--site", "-v", "--debug", "--no-color")


@pytest.fixture(autouse=True)
def _keep_root_logger() -> Iterator[None]:
    """-v reconfigures the root logger; give it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def walk(group: click.Group = cli, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


def examples(command: click.Command) -> list[list[str]]:
    """The command lines of the ``Examples:`` block of ``command``'s help (without the
    leading ``metalchain``; ``#`` comments dropped)."""
    text = "\n".join(t for t in (command.help, command.epilog) if t)
    _, found, block = text.partition("Examples:")
    if not found:
        return []
    lines = []
    for raw in block.splitlines()[1:]:
        stripped = raw.strip()
        if not stripped:
            break
        if stripped.startswith("metalchain "):
            lines.append(shlex.split(stripped, comments=True)[1:])
    return lines


def parse(args: list[str]) -> click.Context:
    """Parse ``metalchain ARGS`` down to the command it names (nothing is run)."""
    ctx = cli.make_context("metalchain", list(args), obj=Context())
    while isinstance(ctx.command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        assert command is not None and name is not None
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def path_of(ctx: click.Context) -> tuple[str, ...]:
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return tuple(reversed(names))


COMMANDS = [((), cli), *walk()]
IDS = [" ".join(("metalchain", *p)) for p, _ in COMMANDS]


def test_the_tree_is_all_there():
    names = {" ".join(p) for p, _ in COMMANDS[1:]}
    assert {"apply", "drift", "exec", "inventory list", "power bootdev", "runs show",
            "schedule add", "lab up", "mirror build", "state show"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=IDS)
def test_every_command_has_an_example_that_parses(path, command):
    found = examples(command)
    assert found, f"`metalchain {' '.join(path)} --help` has no Examples: block"
    for args in found:
        ctx = parse(args)
        # The example is of this command (a group's may name one of its subcommands).
        assert path_of(ctx)[:len(path)] == path, (path, args)


@pytest.mark.parametrize("path,command", COMMANDS, ids=IDS)
def test_global_options_after_the_subcommand(path, command, tmp_path):
    opts = {o for p in command.params for o in p.opts}
    assert set(GLOBAL) <= opts, f"{' '.join(path)} lacks {set(GLOBAL) - opts}"
    args = examples(command)[0]
    # The global options right after the subcommand's name, before its own arguments.
    at = 0
    for name in path_of(parse(args)):
        at = args.index(name, at) + 1
    ctx = parse([*args[:at], "--site", str(tmp_path), "-v", "--no-color", *args[at:]])
    obj = ctx.find_object(Context)
    assert (obj.site_option, obj.debug, obj.no_color) == (str(tmp_path), True, True)


def test_the_operators_example_v_at_the_end_equals_v_first():
    after = parse(["apply", "web", "--role", "base", "-v"])
    before = parse(["-v", "apply", "web", "--role", "base"])
    for ctx in (after, before):
        assert ctx.find_object(Context).debug is True
        assert ctx.params["playbook_or_target"] == "web" and ctx.params["roles"] == ("base",)
    # A later position does not undo an earlier one; --site given last wins.
    ctx = parse(["--site", "a", "-v", "inventory", "--site", "b", "list"])
    assert (ctx.find_object(Context).site_option, ctx.find_object(Context).debug) == ("b", True)


def test_v_after_the_subcommand_gives_the_traceback(run_cli, tmp_path):
    """Through the console script's entry point: -v after the subcommand is --debug."""
    missing = tmp_path / "no-such-site"
    plain = run_cli("inventory", "validate", "--site", str(missing))
    assert plain.code == 2 and "Traceback" not in plain.err
    late = run_cli("inventory", "validate", "--site", str(missing), "-v")
    assert late.code == 2, late.err
    assert "Traceback (most recent call last)" in late.err
    assert late.err.rstrip().splitlines()[-1] == plain.err.rstrip().splitlines()[-1]
    early = run_cli("-v", "--site", str(missing), "inventory", "validate")
    assert early.code == 2 and "Traceback (most recent call last)" in early.err


def test_site_after_a_subgroup_subcommand(run_cli, tmp_path):
    site = tmp_path / "s"
    assert run_cli("init", str(site)).code == 0
    r = run_cli("runs", "list", "--json", "--site", str(site))
    assert r.code == 0 and '"runs.list"' in r.out, r.err
    r = run_cli("inventory", "--site", str(site), "validate")
    assert r.code == 0 and r.out.startswith("ok: 3 hosts, 3 groups"), r.err


def test_exec_keeps_options_after_double_dash_for_the_remote_command():
    ctx = parse(["exec", "fleet", "--limit", "fleet01", "--", "ls", "-v", "--site", "x"])
    assert ctx.params["command"] == ("ls", "-v", "--site", "x")
    obj = ctx.find_object(Context)
    assert (obj.debug, obj.site_option) == (False, None)


def test_shell_completion_script_is_produced(monkeypatch, capsys):
    """click's own completion, through the console script's entry point."""
    from orchestrate.cli import main

    monkeypatch.setenv("_METALCHAIN_COMPLETE", "bash_source")
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 0
    script = capsys.readouterr().out
    assert "_metalchain_completion()" in script
    assert "complete -o nosort -F _metalchain_completion metalchain" in script


def test_shell_completion_completes_subcommands(monkeypatch, capsys):
    from orchestrate.cli import main

    monkeypatch.setenv("_METALCHAIN_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "metalchain inventory va")
    monkeypatch.setenv("COMP_CWORD", "2")
    with pytest.raises(SystemExit):
        main([])
    assert capsys.readouterr().out.split() == ["plain,validate", "plain,vars"]


def test_completion_and_global_options_are_documented(run_cli):
    help_text = run_cli("--help").out
    readme = README.read_text(encoding="utf-8")
    for text in (help_text, readme):
        assert "_METALCHAIN_COMPLETE=bash_source metalchain" in text
    assert "NO_COLOR" in readme and "--no-color" in readme
    assert "metalchain apply --role base web -v" in readme
    assert "changed 3 of 41 resources on 5 hosts" in readme


def complete(monkeypatch, capsys, words: str) -> list[str]:
    """What bash completion offers for the last word of ``words`` (``metalchain ...``)."""
    from orchestrate.cli import main

    monkeypatch.setenv("_METALCHAIN_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    with pytest.raises(SystemExit):
        main([])
    return [item.partition(",")[2] for item in capsys.readouterr().out.split()]


def test_completion_of_the_sites_names(monkeypatch, capsys, run_cli, tmp_path):
    site = tmp_path / "s"
    assert run_cli("init", str(site)).code == 0
    (site / "playbooks" / "roles" / "mine").mkdir(parents=True)
    (site / "playbooks" / "roles" / "mine" / "recipe.yml").write_text("[]\n")
    s = f"metalchain --site {site}"
    assert complete(monkeypatch, capsys, f"{s} inventory show no") == ["node1", "node2"]
    assert complete(monkeypatch, capsys, f"{s} exec hyp") == ["hypervisors"]
    assert complete(monkeypatch, capsys, f"{s} apply --role base node1,!no") == [
        "node1,!node1", "node1,!node2", "node1,!nodes"]
    assert complete(monkeypatch, capsys, f"{s} apply --role mi") == ["mine"]
    assert "base" in complete(monkeypatch, capsys, f"{s} apply --role ")
    assert complete(monkeypatch, capsys, f"{s} apply si") == ["site"]
    assert complete(monkeypatch, capsys, f"{s} power on all --limit @") == ["@failed"]
    # --site after the subcommand is seen too
    assert complete(monkeypatch, capsys,
                    f"metalchain state show --site {site} node") == ["node1", "node2"]
    # a directory that is no site completes nothing (and prints no error into the shell)
    assert complete(monkeypatch, capsys, f"metalchain --site {tmp_path / 'none'} exec n") == []


def test_every_name_parameter_completes():
    from orchestrate.completion import BY_PARAMETER

    for path, command in COMMANDS:
        for param in command.params:
            if param.name in BY_PARAMETER:
                assert param._custom_shell_complete is BY_PARAMETER[param.name], path


def test_each_lazily_loaded_subcommand_is_the_command_of_that_name_once_equipped():
    """The root imports a subcommand's module on first use: every name in SUBCOMMANDS is
    the command it loads, carries the global options once, and the leases commands hang
    under `runs` and `state` as before."""
    from orchestrate.cli import SUBCOMMANDS

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        opts = [o for p in command.params for o in p.opts]
        assert all(opts.count(g) == 1 for g in GLOBAL), (name, opts)
    assert set(cli.commands) == set(SUBCOMMANDS)
    assert "leases" in cli.commands["runs"].commands    # type: ignore[attr-defined]
    assert "release" in cli.commands["state"].commands    # type: ignore[attr-defined]
