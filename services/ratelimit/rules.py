"""Rate limit rules in envoyproxy/ratelimit's configuration format.

    domain: contextcache
    descriptors:
      - key: window            # matches the entry ("window", "minute")
        value: minute
        descriptors:
          - key: remote_address   # no value: every address gets its own counter
            rate_limit: {unit: minute, requests_per_unit: 60}

A request descriptor is a list of (key, value) entries. Matching walks the tree one entry at
a time, preferring a rule with the same key and value over one with the key only; the
limit applies when the last entry lands on a rule with a `rate_limit` (the same rule as
envoyproxy/ratelimit, so that service can replace this one). Supported rule fields: key,
value, rate_limit (unit second|minute|hour|day, requests_per_unit, unlimited, name),
shadow_mode (count, never refuse) and nested descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class RulesError(ValueError):
    """The rules file is malformed; the message names the offending rule."""


@dataclass(frozen=True)
class Limit:
    unit: str
    requests_per_unit: int
    unlimited: bool = False
    shadow_mode: bool = False
    name: str = ""

    @property
    def seconds(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass
class Rule:
    limit: Limit | None = None
    children: dict[str, Rule] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimitRules:
    domain: str
    root: dict[str, Rule]

    def find(self, entries: Sequence[tuple[str, str]]) -> Limit | None:
        """The limit for a descriptor's entries, or None when no rule covers it."""
        level = self.root
        for position, (key, value) in enumerate(entries):
            rule = level.get(f"{key}_{value}") or level.get(key)
            if rule is None:
                return None
            if position == len(entries) - 1:
                return rule.limit
            if not rule.children:
                return None
            level = rule.children
        return None


def _parse_limit(raw: object, where: str, shadow_mode: bool) -> Limit:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: rate_limit must be a mapping")
    unit = str(raw.get("unit", "")).lower()
    if unit not in UNIT_SECONDS:
        raise RulesError(f"{where}: unit must be one of {', '.join(UNIT_SECONDS)}")
    unlimited = bool(raw.get("unlimited", False))
    requests = raw.get("requests_per_unit", 0)
    if not isinstance(requests, int) or requests < 0 or (requests == 0 and not unlimited):
        raise RulesError(f"{where}: requests_per_unit must be a positive integer")
    return Limit(unit, requests, unlimited, shadow_mode, str(raw.get("name", "")))


def _parse_level(raw: object, where: str) -> dict[str, Rule]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise RulesError(f"{where}: descriptors must be a list")
    level: dict[str, Rule] = {}
    for index, item in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or not item.get("key"):
            raise RulesError(f"{here}: every descriptor needs a key")
        key = str(item["key"])
        value = str(item["value"]) if item.get("value") is not None else ""
        name = f"{key}_{value}" if value else key
        if name in level:
            raise RulesError(f"{here}: duplicate descriptor {name!r}")
        limit = None
        if "rate_limit" in item:
            limit = _parse_limit(item["rate_limit"], here, bool(item.get("shadow_mode", False)))
        level[name] = Rule(limit, _parse_level(item.get("descriptors"), f"{here}.descriptors"))
    return level


def parse_rules(text: str) -> RateLimitRules:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not raw.get("domain"):
        raise RulesError("the rules need a domain")
    return RateLimitRules(str(raw["domain"]), _parse_level(raw.get("descriptors"), "descriptors"))


def load_rules(path: Path) -> RateLimitRules:
    try:
        return parse_rules(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RulesError(f"cannot read rate limit rules {path}: {error.strerror}") from None
