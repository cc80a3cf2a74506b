"""The house's limits on each function in fleet/, rollout/ and verify/: cyclomatic complexity (radon's)
at most 12, and at most 50 lines. Prints each function over a limit; exits 1 when there is one."""

from __future__ import annotations

import sys
from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Function

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fleet", "rollout", "verify")
MAX_COMPLEXITY = 12
MAX_LINES = 50


def over(path: Path) -> list[str]:
    found = []
    for block in cc_visit(path.read_text(encoding="utf-8")):
        blocks = [block, *getattr(block, "methods", [])]
        for item in blocks:
            if not isinstance(item, Function):
                continue
            lines = item.endline - item.lineno + 1
            where = f"{path.relative_to(ROOT)}:{item.lineno} {item.fullname}"
            if item.complexity > MAX_COMPLEXITY:
                found.append(f"{where}: complexity {item.complexity} > {MAX_COMPLEXITY}")
            if lines > MAX_LINES:
                found.append(f"{where}: {lines} lines > {MAX_LINES}")
    return found


def main() -> int:
    found = [line for package in PACKAGES for path in sorted((ROOT / package).glob("*.py")) for line in over(path)]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
