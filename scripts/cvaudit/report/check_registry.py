"""The registry of audit verdicts. Each check carries its own name, category and direction (as in Quantus), so the
report renders any of them without special cases; thresholds come from config key `verdicts`. A check is either
about the model (one verdict) or about each attribution method (one per method). The checks live by concern, each
module with its own table (behaviour_checks, shortcut_checks, attribution_checks); cvaudit.report.checks joins the
tables in the verdicts table's order and runs them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    category: str
    higher_is_better: bool
    description: str
    value: Callable  # model checks: value(results); method checks: value(results, method). An estimate (stats), a number or None
    per_method: bool = False
    action: str = ""  # what to do when it warns or fails, in words a report reader can act on
    sized_by: str = "the test split"  # the config key whose image count sets its n (what settles it when inconclusive)
    stage: str | None = None  # the stage whose run time grows with that count (benchmark name, or its prefix)


def registrar(table: dict[str, Check]) -> Callable[[Check], Check]:
    """The `register` of one module of checks: it adds a check to that module's table, in the order written."""
    def register(check: Check) -> Check:
        table[check.name] = check
        return check
    return register
