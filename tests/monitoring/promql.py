"""Metric names in PromQL expressions and in what this process's registry exports."""

from __future__ import annotations

import re

import prometheus_client

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "le", "inf", "nan",
}  # fmt: skip
# Prometheus' own series, not an exporter's.
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if match.group().lower() in KEYWORDS:
            continue
        if match.start() and text[match.start() - 1].isdigit():
            continue  # a duration's unit, a number's exponent
        names.add(match.group())
    return names


def exported_families(
    registry: prometheus_client.CollectorRegistry | None = None,
) -> dict[str, set[str]]:
    """Each metric the registry exports → its series names (labelled metrics included before
    their first use): counters as *_total, histograms as *_bucket/_sum/_count."""
    import runtime.metrics  # noqa: F401 — defines the metrics

    registry = registry or prometheus_client.REGISTRY
    families: dict[str, set[str]] = {}
    for family in registry.collect():
        if family.type == "counter":
            families[family.name] = {family.name + "_total"}
        elif family.type == "histogram":
            families[family.name] = {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            families[family.name] = {family.name}
    return families


def exported_names(registry: prometheus_client.CollectorRegistry | None = None) -> set[str]:
    return set().union(*exported_families(registry).values())
