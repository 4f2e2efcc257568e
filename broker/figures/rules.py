"""Disclosure rules as data: who suppresses what, and how much protection a suppressed cell needs.

A rule suppresses (primary suppression) an entry when

- its count is ``1..threshold`` (a zero is shown unless ``suppress_zeros``: a true or structural zero
  says nobody is there, which discloses nothing about anybody), or
- it is a cell whose largest contributor (one premises, one school) provides more than
  ``dominance_pct`` percent of it (cells only: a total's largest contributor is not known from its
  cells', since one premises may appear in several).

**Protection level** (τ-ARGUS's upper/lower/sliding levels, fixed here as integers). An attacker who
knows every published figure computes, for a suppressed entry with true value v, the feasible
interval [lo, hi] (by linear programming: ``suppress``). The entry is protected when

- ``hi >= v + upper`` (upper protection),
- ``lo <= v - lower`` (lower protection) and
- ``hi - lo >= width`` (sliding protection).

For a threshold cell: ``upper = threshold + 1 - v`` (the attacker cannot rule out that the cell is
above the threshold, so cannot learn that it is small), ``lower = 0``, ``width = protection_width``
(default: the threshold). For a dominance cell: ``upper = width = ceil(v * dominance_protection_pct
/ 100)``, ``lower = 0``: the dominant contributor's count cannot be estimated closer than that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Why(StrEnum):
    THRESHOLD = "threshold"
    DOMINANCE = "dominance"
    ZERO = "zero"
    COMPLEMENTARY = "complementary"


@dataclass(frozen=True, slots=True)
class Protection:
    """What the attacker's interval [lo, hi] for a suppressed value v must satisfy (module docstring)."""

    upper: int
    lower: int
    width: int

    def deficit(self, value: int, lo: float, hi: float) -> float:
        """How far [lo, hi] falls short (0: protected); ``hi`` may be ``math.inf``."""
        short_up = max(0.0, value + self.upper - hi)
        short_down = max(0.0, lo - (value - self.lower))
        short_width = max(0.0, self.width - (hi - lo))
        return short_up + short_down + short_width


@dataclass(frozen=True, slots=True)
class DisclosureRule:
    name: str
    threshold: int
    protection_width: int
    suppress_zeros: bool = False
    dominance_pct: float | None = None
    dominance_protection_pct: int = 20
    rounding_base: int | None = None

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.protection_width < 0:
            raise ValueError(f"rule {self.name!r}: threshold and protection width are counts")
        if self.dominance_pct is not None and not 0 < self.dominance_pct < 100:
            raise ValueError(f"rule {self.name!r}: dominance_pct is a percentage in (0, 100)")
        if self.rounding_base is not None and self.rounding_base < 2:
            raise ValueError(f"rule {self.name!r}: rounding base must be 2 or more")

    def primary(self, value: int, largest: int | None) -> Why | None:
        """Why this count must be suppressed, or ``None`` when it may be shown."""
        if value == 0:
            return Why.ZERO if self.suppress_zeros else None
        if value <= self.threshold:
            return Why.THRESHOLD
        if self.dominance_pct is not None and largest is not None and largest * 100 > self.dominance_pct * value:
            return Why.DOMINANCE
        return None

    def protection(self, value: int, why: Why) -> Protection:
        if why is Why.DOMINANCE:
            level = max(1, math.ceil(value * self.dominance_protection_pct / 100))
            return Protection(upper=level, lower=0, width=level)
        if why is Why.ZERO:
            return Protection(upper=self.threshold + 1, lower=0, width=self.protection_width)
        return Protection(upper=max(1, self.threshold + 1 - value), lower=0, width=self.protection_width)

    def round(self, value: int) -> int:
        """Round half up to the base (applied after suppression, to shown figures only)."""
        if not self.rounding_base:
            return value
        base = self.rounding_base
        return ((value + base // 2) // base) * base


def strictest(rules: Iterable[DisclosureRule]) -> DisclosureRule:
    """One rule holding the strictest of each setting, for a table built from several sources."""
    rs = list(rules)
    if not rs:
        raise ValueError("no rule")
    if len(rs) == 1:
        return rs[0]
    doms = [r.dominance_pct for r in rs if r.dominance_pct is not None]
    bases = [r.rounding_base for r in rs if r.rounding_base]
    return DisclosureRule(
        name="+".join(r.name for r in rs),
        threshold=max(r.threshold for r in rs),
        protection_width=max(r.protection_width for r in rs),
        suppress_zeros=any(r.suppress_zeros for r in rs),
        dominance_pct=min(doms) if doms else None,
        dominance_protection_pct=max(r.dominance_protection_pct for r in rs),
        rounding_base=max(bases) if bases else None,
    )


# DfE: counts of 1 and 2 are suppressed.
DFE = DisclosureRule(name="dfe", threshold=2, protection_width=2)
# NHS Digital (below national level): 1 to 7.
NHS_DIGITAL = DisclosureRule(name="nhs-digital", threshold=7, protection_width=7)
# ONS research outputs: a threshold of 10, i.e. counts under 10 (1..9) are suppressed.
ONS = DisclosureRule(name="ons", threshold=9, protection_width=9)
# The partnership's default for police- and partnership-derived counts (README, "Disclosure
# control"): 1..4 suppressed, and one premises providing more than 85% of a cell dominates it.
PARTNERSHIP = DisclosureRule(name="partnership", threshold=4, protection_width=4, dominance_pct=85)


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The rule for each source; a source with no rule is refused (default deny), never guessed."""

    by_source: Mapping[str, DisclosureRule] = field(
        default_factory=lambda: {"police": PARTNERSHIP, "partnership": PARTNERSHIP, "dfe": DFE, "health": NHS_DIGITAL}
    )

    def for_sources(self, sources: Iterable[str]) -> DisclosureRule:
        chosen = []
        for source in sources:
            if source not in self.by_source:
                raise ValueError(f"no disclosure rule for source {source!r}")
            chosen.append(self.by_source[source])
        return strictest(chosen)
