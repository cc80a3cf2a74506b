"""Waves: how many tenants each batch after the canary takes. Pure decisions, no I/O.

The first batch is `batch-size` tenants. Each batch after one that added no straggler is
ceil(previous × batch-growth), where "previous" is the size the last batch was planned at; a batch that
quarantined a straggler, even within the budget, sets the next one back to `batch-size`, so a
tenant-specific fault slows the ramp down. Every batch is at most `max-batch-size` and the tenants left.
Growth 1 and no cap are fixed batches of `batch-size`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

from fleet.contract import BadInput, show


@dataclass(frozen=True)
class CapSpec:
    """`max-batch-size` as asked for: a count, a percentage of the rollout's scope, or none."""

    text: str
    count: int | None = None
    percent: Decimal | None = None

    def resolve(self, scope_size: int) -> int | None:
        """The cap in tenants: a percentage is rounded down, and at least 1."""
        if self.percent is not None:
            return max(1, math.floor(self.percent * scope_size / 100))
        return self.count


def parse_cap(text: str, what: str = "max-batch-size") -> CapSpec:
    """Empty (no cap), an integer >= 1, or a percentage of the scope above 0 and at most 100 (`25%`)."""
    if not text:
        return CapSpec(text)
    if re.fullmatch(r"\d{1,9}", text) and int(text) >= 1:
        return CapSpec(text, count=int(text))
    match = re.fullmatch(r"(\d{1,3}(?:\.\d{1,4})?)%", text)
    if match and 0 < Decimal(match.group(1)) <= 100:
        return CapSpec(text, percent=Decimal(match.group(1)))
    raise BadInput(
        f"{what} must be empty, an integer >= 1, or a percentage of the scope from above 0% to 100% "
        f"(such as 25%): got {show(text)}"
    )


@dataclass(frozen=True)
class Waves:
    """The batch schedule's rule: where it starts, how it grows, and its cap (in tenants)."""

    first: int  # batch-size
    growth: Decimal = Decimal(1)
    cap: int | None = None

    def next_size(self, previous: int | None, left: int, *, straggled: bool = False) -> int:
        """The next batch's size: `previous` is the size the last batch was planned at (None before the
        first), `left` the tenants still to go, `straggled` whether the last batch quarantined one."""
        size = self.first if previous is None or straggled else math.ceil(previous * self.growth)
        if self.cap is not None:
            size = min(size, self.cap)
        return max(0, min(size, left))

    def sizes(self, total: int, previous: int | None = None, *, straggled: bool = False) -> list[int]:
        """The batch sizes for `total` tenants if nothing (more) straggles, after a batch planned at
        `previous` (None: from the first batch)."""
        sizes: list[int] = []
        left = total
        while left > 0:
            size = self.next_size(sizes[-1] if sizes else previous, left, straggled=straggled and not sizes)
            sizes.append(size)
            left -= size
        return sizes

    def count(self, total: int, previous: int | None = None, *, straggled: bool = False) -> int:
        """len(sizes(...)), without listing them: once batches stop growing (growth 1, or the cap) the
        rest is a division, so a fleet of any size is counted in a few steps."""
        count, left = 0, total
        size = self.next_size(previous, left, straggled=straggled)
        while left > 0:
            if self.growth == 1 or (self.cap is not None and size >= self.cap):
                return count + math.ceil(left / size)
            count, left = count + 1, left - size
            size = self.next_size(size, left)
        return count

    @property
    def smallest(self) -> int:
        """The smallest batch but the last: batch-size, or the cap when it is smaller."""
        return min(self.first, self.cap) if self.cap is not None else self.first


def cut(tenants: list[str], sizes: list[int]) -> list[list[str]]:
    """`tenants` cut into consecutive batches of these sizes."""
    batches, start = [], 0
    for size in sizes:
        batches.append(tenants[start : start + size])
        start += size
    return batches


def sizes_line(sizes: list[int], shown: int = 6) -> str:
    """`3, 6, 12, …, 384, 235`: every size when there are few, else the first three and the last two."""
    if len(sizes) <= shown:
        return ", ".join(str(s) for s in sizes)
    return ", ".join([*(str(s) for s in sizes[:3]), "…", *(str(s) for s in sizes[-2:])])
