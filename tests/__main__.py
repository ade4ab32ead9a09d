"""Run the test tiers and say which ran: ``python -m tests [unit|integration|e2e ...]``.

With CI=true a tier that cannot run (no broker, no Java) fails instead of
skipping; see ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

TIERS = ("unit", "integration", "e2e")


def main() -> int:
    tiers = [a for a in sys.argv[1:] if a in TIERS] or list(TIERS)
    extra = [a for a in sys.argv[1:] if a not in TIERS]
    results = {}
    # each tier's temporary folders (PostgreSQL's data among them) in a folder of this run's own: pytest's shared
    # /tmp/pytest-of-<user> is made private (chmod 700) by any other pytest starting meanwhile, which locks the
    # servers' own user out of their data mid-run
    own = [] if any(a.startswith("--basetemp") for a in extra) else [tempfile.mkdtemp(prefix="tsop-tests-")]
    try:
        for tier in tiers:
            print(f"\n===== tier: {tier} =====", flush=True)
            basetemp = [f"--basetemp={own[0]}/{tier}"] if own else []
            results[tier] = subprocess.run(
                [sys.executable, "-m", "pytest", f"tests/{tier}", "-p", "no:cacheprovider", "-q", "-rfEs",
                 *basetemp, *extra],
                check=False,
            ).returncode
    finally:
        for folder in own:
            if all(int(c) in (0, 5) for c in results.values()) and len(results) == len(tiers):
                shutil.rmtree(folder, ignore_errors=True)
            else:
                print(f"\nthe tiers' temporary folders (logs, data) are kept in {folder}")
    print("\n===== tiers =====")
    for tier, code in results.items():
        verdict = {0: "passed", 5: "no tests"}.get(int(code), f"FAILED (exit {int(code)})")
        print(f"  {tier:<12} {verdict}")
    # pytest's 5 means "no tests collected": a missing tier is a failure in CI
    ok = (0,) if os.environ.get("CI", "").lower() in ("1", "true", "yes") else (0, 5)
    return 0 if all(int(c) in ok for c in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
