"""Rule packs are data: TOML files in pipeline/rules/packs/, one per rule set.

A pack names which connectors count, and gives its scope, old rule, new rule and scenarios as
boolean expressions over the engine's named conditions (CONDITIONS below), e.g.

    new = "connector_match AND (cert_accepted OR p1_accepted)"

Expressions use AND, OR, NOT, parentheses, true, false and the condition names, and are
evaluated with three-valued (Kleene) logic, so a new pack needs no engine change.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError

PACK_DIR = Path(__file__).with_name("packs")

# The conditions the engine computes for every message (all three-valued unless noted).
CONDITIONS = {
    "connector_match": "source IP or certificate matches a connector of the pack's types",
    "p1_accepted": "P1 domain is accepted (false for <>, unknown when P1 is not logged)",
    "p2_accepted": "P2 domain is accepted (unknown when P2 is not logged)",
    "cert_accepted": "a certificate name is an accepted domain (false without certificate)",
    "p1_null": "P1 is the null sender <> (two-valued)",
    "third_party": "P1 domain belongs to a known sending service (two-valued)",
    "to_exo": "the next hop is Exchange Online, or unknown (two-valued)",
    "has_external_rcpt": "a recipient is outside the accepted domains, or recipients unknown",
    "has_internal_rcpt": "a recipient is in an accepted domain (two-valued)",
    "logged_by_exo": "the row comes from an Exchange Online log (two-valued)",
    "is_ndr": "the message is an NDR/DSN (unknown when the log does not say)",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    when: tuple
    remedy: str


@dataclass(frozen=True)
class Pack:
    name: str
    title: str
    old_label: str
    new_label: str
    rejection_response: str
    connector_types: tuple[str, ...]
    requires_connector: bool
    scope: tuple
    old: tuple
    new: tuple
    scenarios: tuple[Scenario, ...]
    source: str

    def remedy(self, scenario: str) -> str:
        return next((s.remedy for s in self.scenarios if s.name == scenario), "")


# --- the expression language ------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z_][A-Za-z0-9_]*)")


def parse_expression(text: str, where: str) -> tuple:
    """'a AND (b OR NOT c)' -> ('and', ('var','a'), ('or', ('var','b'), ('not', ('var','c'))))."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConfigError(f"{where}: cannot read expression {text!r} at {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    tree, rest = _parse_or(tokens, where, text)
    if rest:
        raise ConfigError(f"{where}: unexpected {' '.join(rest)!r} in expression {text!r}")
    return tree


def _parse_or(tokens: list[str], where: str, text: str) -> tuple[tuple, list[str]]:
    left, tokens = _parse_and(tokens, where, text)
    while tokens and tokens[0].upper() == "OR":
        right, tokens = _parse_and(tokens[1:], where, text)
        left = ("or", left, right)
    return left, tokens


def _parse_and(tokens: list[str], where: str, text: str) -> tuple[tuple, list[str]]:
    left, tokens = _parse_not(tokens, where, text)
    while tokens and tokens[0].upper() == "AND":
        right, tokens = _parse_not(tokens[1:], where, text)
        left = ("and", left, right)
    return left, tokens


def _parse_not(tokens: list[str], where: str, text: str) -> tuple[tuple, list[str]]:
    if not tokens:
        raise ConfigError(f"{where}: expression {text!r} ends too early")
    head = tokens[0]
    if head.upper() == "NOT":
        inner, rest = _parse_not(tokens[1:], where, text)
        return ("not", inner), rest
    if head == "(":
        inner, rest = _parse_or(tokens[1:], where, text)
        if not rest or rest[0] != ")":
            raise ConfigError(f"{where}: missing ')' in expression {text!r}")
        return inner, rest[1:]
    if head.lower() in ("true", "false"):
        return ("const", head.lower() == "true"), tokens[1:]
    if head in CONDITIONS:
        return ("var", head), tokens[1:]
    raise ConfigError(
        f"{where}: unknown condition {head!r} in {text!r}; expected one of: {', '.join(CONDITIONS)}"
    )


def evaluate_expression(tree: tuple, values: dict[str, pa.Array], length: int) -> pa.Array:
    """Evaluate a parsed expression over boolean arrays with Kleene logic (null = unknown)."""
    kind = tree[0]
    if kind == "var":
        return values[tree[1]]
    if kind == "const":
        return pa.array([tree[1]] * length, pa.bool_())
    if kind == "not":
        return pc.invert(evaluate_expression(tree[1], values, length))
    left = evaluate_expression(tree[1], values, length)
    right = evaluate_expression(tree[2], values, length)
    return pc.and_kleene(left, right) if kind == "and" else pc.or_kleene(left, right)


# --- loading ------------------------------------------------------------------------------------


def pack_names() -> list[str]:
    return sorted(p.stem for p in PACK_DIR.glob("*.toml"))


_PACK_KEYS = {
    "name", "title", "old_label", "new_label", "rejection_response", "connector_types",
    "requires_connector", "scope", "old", "new", "scenarios",
}


@cache
def load_pack(name_or_path: str) -> Pack:
    """A shipped pack by name (`relay-2023`) or any pack file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PACK_DIR / f"{name_or_path}.toml"
    where = str(path)
    if not path.is_file():
        raise ConfigError(
            f"rule pack {name_or_path!r} not found; expected one of: {', '.join(pack_names())}, or a pack file"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    unknown = set(data) - _PACK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        scenarios = tuple(
            Scenario(s["name"], parse_expression(s["when"], f"{where}: scenario {s['name']}"), s.get("remedy", ""))
            for s in data.get("scenarios", [])
        )
        return Pack(
            name=data["name"],
            title=data.get("title", data["name"]),
            old_label=data.get("old_label", "old"),
            new_label=data.get("new_label", "new"),
            rejection_response=data.get("rejection_response", ""),
            connector_types=tuple(data.get("connector_types", ["OnPremises"])),
            requires_connector=bool(data.get("requires_connector", False)),
            scope=parse_expression(data.get("scope", "true"), f"{where}: scope"),
            old=parse_expression(data["old"], f"{where}: old"),
            new=parse_expression(data["new"], f"{where}: new"),
            scenarios=scenarios,
            source=where,
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
