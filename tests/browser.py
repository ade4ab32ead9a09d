"""A real headless browser for the tests: Debian's Chromium, driven by playwright.

Playwright's own browser download is not used (the test machines reach package registries only): the
tests launch the system's ``chromium`` through ``executable_path``. ``chromium_path`` installs it with
apt-get when it is missing (about 40 s, once per machine); with CI=true a browser that cannot be had
fails the test instead of skipping it (``infra.unavailable``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tests import infra


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        for args in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "chromium"]):
            done = subprocess.run(args, check=False, capture_output=True, timeout=600,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if args[1] == "install" and done.returncode == 0:
                break
        found = shutil.which("chromium")
    if found is None:
        infra.unavailable("no chromium (apt-get install -y chromium) for the browser tests")
    try:
        import playwright  # noqa: F401
    except ImportError:
        infra.unavailable("the playwright package is missing (pip install -r requirements-dev.txt)")
    assert found is not None
    return found


if __name__ == "__main__":  # `python -m tests.browser`: what `make browser` runs
    import sys

    try:
        print(chromium_path())
    except BaseException as exc:  # noqa: BLE001 - pytest's skip and fail are BaseExceptions
        print(f"no browser for the browser tests: {exc}", file=sys.stderr)
        sys.exit(1 if infra.CI else 0)
