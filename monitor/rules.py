"""Remediation rules (``playbooks/remediation.yml``): label matchers -> a ladder of steps.

The file has a ``policy:`` (the guards' settings, :class:`monitor.guards.Policy`, plus an
optional pager webhook) and ``rules:``, tried in order; the first whose ``match`` fits an
incident's labels (``alertname`` included) takes it::

    policy: {cooldown: 60, max_concurrent: 5, fleet_cap: 0.25, flap_count: 3,
             page_webhook: {url: "https://pager.example/hook", timeout: 5}}
    rules:
      - name: exporter-down
        match: {alertname: ExporterDown, job: node}          # exact, a list, or {regex: RE}
        steps:
          - action: restart_service
            args: {service: prometheus-node-exporter}
            verify: {kind: service_active, timeout: 20}
          - action: apply_role
            args: {role: "{{ labels.role | 'node_exporter' }}"}
            verify: {kind: service_active, args: {service: prometheus-node-exporter}}
            timeout: 300

A rule may have ``escalate: REASON`` instead of ``steps``: nothing is tried, the incident
goes to a human at once (``escalated``, with the pager), e.g. for a BMC that does not answer,
which no power action could go through.

A step's ``args`` (and its verification's, which default to the step's) may refer to the
incident with one fixed syntax, ``{{ REF | REF ... }}``: the first reference that has a
non-empty value wins; ``REF`` is ``labels.NAME``, ``target``, ``alertname`` or a quoted
literal (taken as it is, even ``''``). Alert values are data: they are substituted as
plain strings in one pass — never rendered as a template, never looked at again — so a label
holding ``{{ ... }}`` stays that text. Anything else between ``{{ }}`` is an error when the
file is loaded.

Every error names ``file:line``; unknown keys get a did-you-mean; action and verification
names are checked against what is registered (:mod:`monitor.actions`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inventory.errors import InventoryError
from inventory.yamlsource import read_yaml_file
from monitor.actions import KNOWN_ACTIONS, KNOWN_VERIFIERS
from monitor.guards import Policy

RULES_FILE = "remediation.yml"
#: The rules shipped with metalchain (a site's playbooks/remediation.yml replaces them).
SHIPPED_RULES = Path(__file__).resolve().parents[1] / "playbooks" / RULES_FILE

TOP_KEYS = ("policy", "rules")
POLICY_KEYS = ("cooldown", "rate_count", "rate_window", "max_concurrent", "fleet_cap",
               "flap_count", "flap_window", "dry_run", "approval_required", "page_webhook")
PAGE_KEYS = ("url", "timeout")
RULE_KEYS = ("name", "match", "steps", "escalate")
STEP_KEYS = ("action", "args", "allow", "verify", "timeout")
VERIFY_KEYS = ("kind", "args", "timeout")
MAX_TIMEOUT = 86400.0
DEFAULT_STEP_TIMEOUT = 120.0
DEFAULT_VERIFY_TIMEOUT = 30.0

_REF_BLOCK = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REF = re.compile(r"""^\s*(?:labels\.([A-Za-z_][A-Za-z0-9_]*)|(target)|(alertname)"""
                  r"""|'([^'{}]*)'|"([^"{}]*)")\s*$""")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MissingValue(ValueError):
    """A ``{{ }}`` reference with no value for this incident (e.g. the label is absent)."""


@dataclass(frozen=True)
class Verification:
    kind: str
    args: Mapping[str, Any] | None = None      # None: the step's args
    timeout: float = DEFAULT_VERIFY_TIMEOUT


@dataclass(frozen=True)
class RuleStep:
    action: str
    args: Mapping[str, Any] = field(default_factory=dict)
    allow: bool = False
    verify: Verification | None = None
    timeout: float = DEFAULT_STEP_TIMEOUT
    line: int = 0


@dataclass(frozen=True)
class Matcher:
    label: str
    values: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None

    def fits(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.label)
        if value is None:
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value in self.values


@dataclass(frozen=True)
class Rule:
    name: str
    match: tuple[Matcher, ...]
    steps: tuple[RuleStep, ...]
    file: str = ""
    line: int = 0
    #: A rule that only pages a human (no steps): the reason an operator reads.
    escalate: str = ""

    def fits(self, labels: Mapping[str, str]) -> bool:
        return all(m.fits(labels) for m in self.match)


@dataclass(frozen=True)
class Pager:
    url: str
    timeout: float = 5.0


@dataclass(frozen=True)
class RuleSet:
    policy: Policy
    rules: tuple[Rule, ...]
    pager: Pager | None = None
    source: str = ""

    def match(self, labels: Mapping[str, str]) -> Rule | None:
        """The first rule whose matchers all fit ``labels``."""
        for rule in self.rules:
            if rule.fits(labels):
                return rule
        return None

    def rule(self, name: str | None) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


# -- substitution ----------------------------------------------------------------------------

def _check_refs(text: str, fail: Any) -> None:
    if "{%" in text or "{#" in text:
        raise fail("only {{ REF }} references are allowed ('{%' and '{#' are not)")
    rest = _REF_BLOCK.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise fail("an unclosed '{{' or a stray '}}'")
    for block in _REF_BLOCK.findall(text):
        for ref in block.split("|"):
            if _REF.match(ref) is None:
                raise fail(f"'{{{{{block}}}}}': a reference is labels.NAME, target, "
                           "alertname or a quoted literal, alternatives separated by '|'")


def _resolve_block(block: str, target: str, labels: Mapping[str, str]) -> str:
    for ref in block.split("|"):
        m = _REF.match(ref)
        if m is None:   # checked at load time; a RuleStep built by hand may still hold one
            raise MissingValue(f"bad reference '{ref.strip()}'")
        label, is_target, is_alertname, lit1, lit2 = m.groups()
        if label is not None:
            value = labels.get(label, "")
        elif is_target:
            value = target
        elif is_alertname:
            value = labels.get("alertname", "")
        else:   # a literal is the last resort and always taken, even when empty
            return lit1 if lit1 is not None else (lit2 or "")
        if value:
            return value
    names = ", ".join(r.strip() for r in block.split("|"))
    raise MissingValue(f"no value for {{{{ {names} }}}} in this incident")


def substitute(value: Any, target: str, labels: Mapping[str, str]) -> Any:
    """``value`` with its ``{{ }}`` references replaced by the incident's values, as plain
    text in one pass (a substituted value is never scanned again).

    >>> substitute({"service": "{{ labels.unit | 'x' }}"}, "h1", {"unit": "{{ evil }}"})
    {'service': '{{ evil }}'}
    """
    if isinstance(value, str):
        return _REF_BLOCK.sub(lambda m: _resolve_block(m.group(1), target, labels), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, target, labels) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, target, labels) for v in value]
    return value


# -- loading ---------------------------------------------------------------------------------

class _Where:
    """Errors that name the file and the line of a key or an item."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Any, key: Any, message: str) -> InventoryError:
        line = None
        if node is not None and hasattr(node, "line_of"):
            line = node.line_of(key) if key is not None else getattr(node, "line", None)
        return InventoryError(message, file=self.source, line=line or None)

    def only_keys(self, node: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise self.fail(node, key, f"unknown key '{key}' in {what}{suggestion}; "
                                           f"allowed: {', '.join(allowed)}")

    def mapping(self, node: Any, key: Any, value: Any, what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(node, key, f"{what} must be a mapping")
        return value

    def number(self, node: Mapping[str, Any], key: str, *, lo: float, hi: float,
               integer: bool = False) -> float:
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                integer and not isinstance(value, int)):
            kind = "a whole number" if integer else "a number"
            raise self.fail(node, key, f"'{key}' must be {kind}")
        if not lo <= value <= hi:
            raise self.fail(node, key, f"'{key}' must be between {lo:g} and {hi:g}, "
                                       f"got {value}")
        return value


def _names_hint(name: str, known: Iterable[str]) -> str:
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(known)}"


def load_rules(path: Path, *, actions: Collection[str] | None = None,
               verifiers: Collection[str] | None = None,
               display_name: str | None = None) -> RuleSet:
    """Read and validate a rules file; :class:`InventoryError` naming file:line.

    ``actions``/``verifiers``: the registered names (default: the documented ones)."""
    name = display_name or str(path)
    return parse_rules(read_yaml_file(path, name), name, actions=actions,
                       verifiers=verifiers)


def parse_rules(doc: Any, source: str, *, actions: Collection[str] | None = None,
                verifiers: Collection[str] | None = None) -> RuleSet:
    where = _Where(source)
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise InventoryError("a remediation file is a mapping with 'policy' and 'rules'",
                             file=source, line=getattr(doc, "line", None) or 1)
    where.only_keys(doc, TOP_KEYS, "the remediation file")
    policy, pager = _policy(where, doc)
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise where.fail(doc, "rules", "'rules' must be a list")
    known_actions = tuple(actions) if actions is not None else KNOWN_ACTIONS
    known_verifiers = tuple(verifiers) if verifiers is not None else KNOWN_VERIFIERS
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _rule(where, raw_rules, i, raw, known_actions, known_verifiers)
        if rule.name in seen:
            raise where.fail(raw, "name", f"rule name '{rule.name}' is used twice")
        seen.add(rule.name)
        rules.append(rule)
    return RuleSet(policy=policy, rules=tuple(rules), pager=pager, source=source)


def _policy(where: _Where, doc: Mapping[str, Any]) -> tuple[Policy, Pager | None]:
    raw = doc.get("policy")
    if raw is None:
        return Policy(), None
    raw = where.mapping(doc, "policy", raw, "'policy'")
    where.only_keys(raw, POLICY_KEYS, "policy")
    defaults = {f.name: f.default for f in fields(Policy)}
    values: dict[str, Any] = {}
    for key in ("cooldown", "rate_window", "flap_window"):
        if key in raw:
            values[key] = float(where.number(raw, key, lo=0, hi=30 * 86400))
    for key in ("rate_count", "max_concurrent", "flap_count"):
        if key in raw:
            values[key] = int(where.number(raw, key, lo=1, hi=1_000_000, integer=True))
    if "fleet_cap" in raw:
        cap = where.number(raw, "fleet_cap", lo=0, hi=1)
        if cap <= 0:
            raise where.fail(raw, "fleet_cap", "'fleet_cap' must be above 0 (a share of a "
                                                "group, e.g. 0.25)")
        values["fleet_cap"] = float(cap)
    if "dry_run" in raw:
        if not isinstance(raw["dry_run"], bool):
            raise where.fail(raw, "dry_run", "'dry_run' must be true or false")
        values["dry_run"] = raw["dry_run"]
    if "approval_required" in raw:
        names = raw["approval_required"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise where.fail(raw, "approval_required",
                             "'approval_required' must be a list of action names")
        values["approval_required"] = frozenset(names)
    pager = None
    if raw.get("page_webhook") is not None:
        pager = _pager(where, raw)
    unknown = set(values) - set(defaults)
    if unknown:   # pragma: no cover - POLICY_KEYS and Policy's fields are kept together
        raise where.fail(raw, None, f"unknown policy settings {sorted(unknown)}")
    return Policy(**values), pager


def _pager(where: _Where, raw: Mapping[str, Any]) -> Pager:
    value = raw["page_webhook"]
    if isinstance(value, str):
        value = {"url": value}
        node: Any = raw
        key: Any = "page_webhook"
    else:
        node = where.mapping(raw, "page_webhook", value, "'page_webhook'")
        key = "url"
        where.only_keys(node, PAGE_KEYS, "page_webhook")
    url = value.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
        raise where.fail(node, key, "page_webhook needs an http:// or https:// url")
    timeout = 5.0
    if "timeout" in value:
        timeout = float(where.number(value, "timeout", lo=0.1, hi=120))
    return Pager(url=url, timeout=timeout)


def _rule(where: _Where, parent: Any, index: int, raw: Any, actions: Sequence[str],
          verifiers: Sequence[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise where.fail(parent, index, f"rules[{index}] must be a mapping")
    where.only_keys(raw, RULE_KEYS, f"rules[{index}]")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise where.fail(raw, "name", f"rules[{index}] needs a 'name' (letters, digits, "
                                      "'_', '.', '-')")
    what = f"rule '{name}'"
    match = raw.get("match")
    if match is None:
        raise where.fail(raw, None, f"{what} needs 'match' (label: value)")
    match = where.mapping(raw, "match", match, f"{what}: 'match'")
    if not match:
        raise where.fail(raw, "match", f"{what}: 'match' needs at least one label")
    matchers = tuple(_matcher(where, match, label, value, what)
                     for label, value in match.items())
    if "escalate" in raw:
        # Nothing a machine should try (e.g. a BMC that does not answer: power-cycling
        # through it cannot work): the incident goes to a human at once.
        reason = raw["escalate"]
        if "steps" in raw:
            raise where.fail(raw, "steps", f"{what} has both 'escalate' and 'steps': a rule "
                                           "either pages a human or has a ladder")
        if not isinstance(reason, str) or not reason.strip():
            raise where.fail(raw, "escalate", f"{what}: 'escalate' needs the reason a human "
                                              "reads (a non-empty string)")
        return Rule(name=name, match=matchers, steps=(), file=where.source,
                    line=getattr(raw, "line", 0), escalate=reason.strip()[:500])
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise where.fail(raw, "steps" if "steps" in raw else None,
                         f"{what} needs 'steps': a non-empty list (or 'escalate: REASON')")
    steps = tuple(_step(where, steps_raw, i, s, what, actions, verifiers)
                  for i, s in enumerate(steps_raw))
    return Rule(name=name, match=matchers, steps=steps, file=where.source,
                line=getattr(raw, "line", 0))


def _matcher(where: _Where, node: Mapping[str, Any], label: Any, value: Any,
             what: str) -> Matcher:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise where.fail(node, label, f"{what}: '{label}' is not a label name")
    if isinstance(value, str):
        return Matcher(label, (value,))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return Matcher(label, tuple(value))
    if isinstance(value, Mapping) and set(value) == {"regex"} and isinstance(
            value["regex"], str):
        try:
            return Matcher(label, pattern=re.compile(value["regex"]))
        except re.error as exc:
            raise where.fail(node, label, f"{what}: bad regex for '{label}': {exc}") from None
    raise where.fail(node, label, f"{what}: '{label}' must match a string, a list of "
                                  "strings or {regex: PATTERN}")


def _args(where: _Where, node: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    raw = node.get(key)
    if raw is None:
        return {}
    raw = where.mapping(node, key, raw, f"{what}: '{key}'")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise where.fail(raw, name, f"{what}: argument names are strings")
        ok_scalar = isinstance(value, (str, int, float, bool))
        ok_list = isinstance(value, list) and all(isinstance(v, (str, int, float))
                                                  for v in value)
        if not (ok_scalar or ok_list):
            raise where.fail(raw, name, f"{what}: argument '{name}' must be a string, a "
                                        "number, true/false or a list of those")
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str):
                _check_refs(text, lambda msg, n=name: where.fail(
                    raw, n, f"{what}: argument '{n}': {msg}"))
        out[name] = list(value) if isinstance(value, list) else value
    return out


def _step(where: _Where, parent: Any, index: int, raw: Any, rule: str,
          actions: Sequence[str], verifiers: Sequence[str]) -> RuleStep:
    what = f"{rule} step {index + 1}"
    if not isinstance(raw, Mapping):
        raise where.fail(parent, index, f"{what} must be a mapping")
    where.only_keys(raw, STEP_KEYS, what)
    action = raw.get("action")
    if not isinstance(action, str):
        raise where.fail(raw, None, f"{what} needs 'action'")
    if action not in actions:
        raise where.fail(raw, "action", f"{what}: unknown action '{action}'"
                                        f"{_names_hint(action, actions)}")
    allow = raw.get("allow", False)
    if not isinstance(allow, bool):
        raise where.fail(raw, "allow", f"{what}: 'allow' must be true or false")
    timeout = DEFAULT_STEP_TIMEOUT
    if "timeout" in raw:
        timeout = float(where.number(raw, "timeout", lo=1, hi=MAX_TIMEOUT))
    verify = None
    if raw.get("verify") is not None:
        verify = _verify(where, raw, what, verifiers)
    args = _args(where, raw, "args", what)
    if action == "playbook" and not isinstance(args.get("name"), str):
        raise where.fail(raw, "args" if "args" in raw else None,
                         f"{what}: the playbook action needs args: {{name: PLAYBOOK}}")
    return RuleStep(action=action, args=args, allow=allow,
                    verify=verify, timeout=timeout, line=parent.line_of(index)
                    if hasattr(parent, "line_of") else 0)


def _verify(where: _Where, step: Mapping[str, Any], what: str,
            verifiers: Sequence[str]) -> Verification:
    raw = where.mapping(step, "verify", step["verify"], f"{what}: 'verify'")
    where.only_keys(raw, VERIFY_KEYS, f"{what} verify")
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise where.fail(raw, None, f"{what}: verify needs 'kind'")
    if kind not in verifiers:
        raise where.fail(raw, "kind", f"{what}: unknown verification '{kind}'"
                                      f"{_names_hint(kind, verifiers)}")
    timeout = DEFAULT_VERIFY_TIMEOUT
    if "timeout" in raw:
        timeout = float(where.number(raw, "timeout", lo=0, hi=MAX_TIMEOUT))
    args = _args(where, raw, "args", f"{what} verify") if "args" in raw else None
    query = (args or {}).get("query")
    if kind == "prometheus" and isinstance(query, str) and "{{" in query:
        # Alert values in a query would be code, not data: the verifier quotes them itself.
        raise where.fail(raw["args"], "query", f"{what}: a prometheus query cannot refer "
                                               "to the incident (use alert_gone: true)")
    return Verification(kind=kind, args=args, timeout=timeout)


def rules_path(playbooks_dir: Path | None) -> Path:
    """The site's ``playbooks/remediation.yml`` if it has one, else the shipped rules."""
    if playbooks_dir is not None and (playbooks_dir / RULES_FILE).is_file():
        return playbooks_dir / RULES_FILE
    return SHIPPED_RULES
