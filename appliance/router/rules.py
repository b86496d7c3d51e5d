"""Routing rules: a pure function from an instance's facts to the destinations it must reach."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import RouterConfig


@dataclass(frozen=True)
class Facts:
    """What rules may look at: association facts plus the dataset's tag values by keyword."""

    calling_ae: str | None
    called_ae: str | None
    source_node: str | None
    tags: Mapping[str, str | None]

    def value(self, key: str) -> str | None:
        if key == "calling_ae":
            return self.calling_ae
        if key == "called_ae":
            return self.called_ae
        if key == "source_node":
            return self.source_node
        return self.tags.get(key)


@dataclass(frozen=True)
class Target:
    destination: str
    route: str
    priority: int


@dataclass(frozen=True)
class RouteDecision:
    route: str
    matched: bool
    reasons: tuple[str, ...]  # for a miss: each condition that failed, in words


def evaluate(cfg: RouterConfig, facts: Facts) -> tuple[list[Target], list[RouteDecision]]:
    """Every matching route contributes its destinations; one job per destination, best priority wins."""
    by_destination: dict[str, Target] = {}
    decisions: list[RouteDecision] = []
    for route in cfg.routes:
        misses = []
        for key, op in route.match.items():
            value = facts.value(key)
            if not op.matches(value):
                shown = "absent" if value is None else f"'{value}'"
                misses.append(f"{key} is {shown}, wanted {op.describe()}")
        decisions.append(RouteDecision(route.name, not misses, tuple(misses)))
        if misses:
            continue
        for dest in route.to:
            current = by_destination.get(dest)
            if current is None or int(route.priority) < current.priority:
                by_destination[dest] = Target(dest, route.name, int(route.priority))
    return list(by_destination.values()), decisions
