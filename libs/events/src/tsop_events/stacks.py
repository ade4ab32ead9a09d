"""Where a process's asyncio tasks and threads are: for a loop that hangs without raising.

``kill -USR1 <pid>`` logs them (every service installs the handler at start, see ``runtime``); a consumer whose
fetch or batch takes far longer than it can logs them by itself (see ``consumer``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import traceback
from typing import Any

log = logging.getLogger(__name__)


def dump_stacks(why: str = "SIGUSR1") -> None:
    """Log where every asyncio task and every thread of the process is (``kill -USR1 <pid>``): a loop that hangs
    without raising (a consumer that stopped storing, a stop that takes long) shows what it awaits."""
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"{len(tasks)} asyncio tasks:\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- task {task.get_name()}\n")
        out.write("".join(_awaiting(task.get_coro())))
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, ident)}\n")
        out.write("".join(traceback.format_stack(frame, limit=25)))
    log.warning("stacks (%s):\n%s", why, out.getvalue())


def _awaiting(coro: Any) -> list[str]:
    """The chain of coroutines a suspended task is in (``Task.print_stack`` shows only the outermost), and what
    the innermost awaits."""
    lines: list[str] = []
    for _ in range(50):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
        inner = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if inner is None or not (hasattr(inner, "cr_frame") or hasattr(inner, "gi_frame")):
            if inner is not None:
                lines.append(f"  awaiting {inner!r:.300}\n")
            break
        coro = inner
    return lines
