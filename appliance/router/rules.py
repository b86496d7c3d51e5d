"""Routing rules: a pure function from an instance's facts to the destinations it must reach.

Every route is evaluated (no first-match-wins), so one object can go to many destinations. When
several routes send to the same destination the object still goes there once: a `hold` route wins
over a forwarding one (a quarantine must not be bypassed by a broader rule), then the better
priority, then the route listed first. The same function explains itself: each miss says which
condition failed and why, for `dicom-router rules test` and the console.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .config import Condition, Route, RouterConfig

TagValue = str | tuple[str, ...] | None  # a tuple: the values found at a Sequence.Keyword path, one per item


@dataclass(frozen=True)
class Facts:
    """What rules may look at: association facts plus the dataset's tag values by keyword (or path)."""

    calling_ae: str | None
    called_ae: str | None
    source_node: str | None
    tags: Mapping[str, TagValue]

    def value(self, key: str) -> TagValue:
        if key == "calling_ae":
            return self.calling_ae
        if key == "called_ae":
            return self.called_ae
        if key == "source_node":
            return self.source_node
        return self.tags.get(key)


@dataclass(frozen=True)
class Target:
    """One destination an object must reach, and how (from the route that won for that destination)."""

    destination: str
    route: str
    priority: int
    hold_reason: str | None = None  # not None: the job is created held (quarantine / review)
    wait_for: str | None = None  # None = send at once; "series" / "study" = when that is complete
    morph: tuple[str, ...] = ()  # profile names, the route's then the destination node's
    transcode: str = "decompress"


@dataclass(frozen=True)
class RouteDecision:
    route: str
    matched: bool
    reasons: tuple[str, ...]  # for a miss: each condition that failed, in words
    targets: tuple[Target, ...] = field(default=(), compare=False)  # for a hit: what this route asks for


def evaluate(
    cfg: RouterConfig, facts: Facts, now: datetime | None = None, *, explain: bool = True
) -> tuple[list[Target], list[RouteDecision]]:
    """Every matching route contributes its destinations; one target per destination (see module doc).

    With explain=False (the receiver's hot path) misses are not put into words and no decisions are returned.
    """
    when = now or datetime.now()
    by_destination: dict[str, Target] = {}
    decisions: list[RouteDecision] = []
    for route in cfg.routes:
        if not explain:
            if holds(route.match, facts) and (not route.when or any(w.contains(when) for w in route.when)):
                for target in _targets(cfg, route):
                    _keep_best(by_destination, target)
            continue
        misses = list(condition_misses(route.match, facts))
        if not misses and route.when and not any(w.contains(when) for w in route.when):
            windows = " or ".join(w.describe() for w in route.when)
            misses.append(f"outside its time window ({windows}); it is {when:%a %H:%M}")
        if misses:
            decisions.append(RouteDecision(route.name, False, tuple(misses)))
            continue
        targets = _targets(cfg, route)
        decisions.append(RouteDecision(route.name, True, (), targets))
        for target in targets:
            _keep_best(by_destination, target)
    return list(by_destination.values()), decisions


def _keep_best(by_destination: dict[str, Target], target: Target) -> None:
    current = by_destination.get(target.destination)
    if current is None or _rank(target) < _rank(current):
        by_destination[target.destination] = target


def _targets(cfg: RouterConfig, route: Route) -> tuple[Target, ...]:
    return tuple(_target(cfg, route, dest) for dest in route.to)


def _rank(t: Target) -> tuple[int, int]:
    return (0 if t.hold_reason is not None else 1, t.priority)  # earlier route wins ties (strict <)


def _target(cfg: RouterConfig, route: Route, destination: str) -> Target:
    node = cfg.nodes.get(destination)
    node_morph = tuple(node.morph) if node is not None else ()
    hold = None
    if route.action == "hold":
        hold = route.hold_reason or f"held by route '{route.name}' for review: release it to send"
    return Target(
        destination=destination,
        route=route.name,
        priority=int(route.priority),
        hold_reason=hold,
        wait_for=None if route.forward == "instance" else route.forward,
        morph=tuple(route.morph) + tuple(p for p in node_morph if p not in route.morph),
        transcode=route.transcode,
    )


def holds(cond: Condition, facts: Facts) -> bool:
    """Does `cond` hold? The same logic as condition_misses, without the words."""
    for key, op in cond.tests.items():
        if not op.matches(facts.value(key)):
            return False
    if not all(holds(child, facts) for child in cond.all_of):
        return False
    if cond.any_of and not any(holds(child, facts) for child in cond.any_of):
        return False
    return cond.none_of is None or not holds(cond.none_of, facts)


def condition_misses(cond: Condition, facts: Facts) -> Iterator[str]:
    """Why `cond` does not hold for these facts: nothing at all when it holds."""
    for key, op in cond.tests.items():
        value = facts.value(key)
        if not op.matches(value):
            yield f"{key} is {_shown(value)}, wanted {op.describe()}"
    for child in cond.all_of:
        yield from condition_misses(child, facts)
    if cond.any_of:
        failed = [list(condition_misses(child, facts)) for child in cond.any_of]
        if all(failed):
            yield "none of the `any` conditions holds: " + " / ".join("; ".join(f) for f in failed)
    if cond.none_of is not None and not any(True for _ in condition_misses(cond.none_of, facts)):
        yield f"the `not` condition holds ({_describe(cond.none_of, facts)})"


def _describe(cond: Condition, facts: Facts) -> str:
    return ", ".join(f"{k} is {_shown(facts.value(k))}" for k in cond.tested_keys()) or "empty condition"


def _shown(value: TagValue) -> str:
    if value is None:
        return "absent"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"'{v}'" for v in value) + "]" if value else "absent (no sequence item)"
    return f"'{value}'"


# -- test / production segregation -------------------------------------------------------------------


def environment_problems(cfg: RouterConfig) -> Iterator[tuple[tuple[int | str, ...], str]]:
    """Routes that could carry objects from a test source to a production destination, or the reverse.

    Which sources can feed a route is decided from its association conditions alone (source_node,
    calling_ae): a dataset condition could be true for any source, so it never narrows the set.
    """
    sources = {name: node for name, node in cfg.nodes.items() if node.is_source}
    for i, route in enumerate(cfg.routes):
        if route.allow_environment_crossing:
            continue
        feeding = [name for name, node in sources.items() if _may_hold(route.match, name, node.ae_title) is not False]
        for j, dest in enumerate(route.to):
            dest_node = cfg.nodes.get(dest)
            if dest_node is None:
                continue
            crossing = [s for s in feeding if sources[s].environment != dest_node.environment]
            if crossing:
                src = crossing[0]
                more = f" (and {len(crossing) - 1} more)" if len(crossing) > 1 else ""
                yield (
                    ("routes", i, "to", j),
                    f"route '{route.name}' could carry objects from {sources[src].environment} source '{src}'{more} "
                    f"to {dest_node.environment} destination '{dest}': restrict the route with source_node "
                    "(or calling_ae), or add `allow_environment_crossing: true` to the route if this is intended",
                )


def _may_hold(cond: Condition, source: str, ae_title: str) -> bool | None:
    """Three-valued: does `cond` hold for objects from this source? None = depends on the dataset."""
    results: list[bool | None] = []
    for key, op in cond.tests.items():
        if key == "source_node":
            results.append(op.matches(source))
        elif key == "calling_ae":
            results.append(op.matches(ae_title))
        else:
            results.append(None)  # called_ae and dataset tags: unknown before an object arrives
    results += [_may_hold(child, source, ae_title) for child in cond.all_of]
    if cond.any_of:
        any_results = [_may_hold(child, source, ae_title) for child in cond.any_of]
        results.append(True if True in any_results else (None if None in any_results else False))
    if cond.none_of is not None:
        inner = _may_hold(cond.none_of, source, ae_title)
        results.append(None if inner is None else not inner)
    if False in results:
        return False
    return None if None in results else True
