"""Ending a pipeline task's process without paying for the interpreter's teardown.

A task process that imported torch and mlflow spends a second or more *after* its work is done: garbage
collection of every module and object, finalizers, the atexit handlers of the libraries. :func:`install` skips
that, and only where it is safe: in a process started by kfp's executor (``python -m kfp.dsl.executor_main``,
how every component runs, on a cluster and on the local runner), where by the time the interpreter exits

* the executor has written the task's outputs (its ``executor_output.json`` and artifacts) and returned;
* every MLflow call has returned (ahps logs synchronously, and runs are finished inside the step);
* checkpoints and result files were written atomically;
* non-daemon threads have been joined (Python joins them before it runs atexit handlers).

The hook is an ``atexit`` handler, so it runs after the handlers registered later (e.g. mlflow's, registered on
its import), flushes stdout/stderr and the logging handlers, and calls ``os._exit(0)``. It does nothing when
the task failed: an uncaught exception (recorded by a wrapped ``sys.excepthook``) leaves the normal exit, with
its traceback and non-zero status, untouched. Anywhere else (tests, the CLI, a notebook calling the steps)
:func:`install` does nothing. ``AHPS_FAST_EXIT=0`` turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Any

FAST_EXIT_ENV = "AHPS_FAST_EXIT"
KFP_EXECUTOR = "kfp.dsl.executor_main"

_state: dict[str, Any] = {"installed": False, "failed": False}


def in_kfp_executor() -> bool:
    """Whether this process is a kfp component executor (``python -m kfp.dsl.executor_main``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == KFP_EXECUTOR


def install(force: bool = False) -> bool:
    """Arrange the fast exit (module docstring); True when it is armed. ``force``: also outside kfp's executor
    (for tests of the mechanism, in a child process)."""
    if _state["installed"]:
        return True
    if os.environ.get(FAST_EXIT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not (force or in_kfp_executor()):
        return False
    previous = sys.excepthook

    def hook(*exc_info: Any) -> None:
        _state["failed"] = True
        previous(*exc_info)

    sys.excepthook = hook
    atexit.register(_exit_now)
    _state["installed"] = True
    return True


def _exit_now() -> None:
    if _state["failed"]:
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(0)


__all__ = ["FAST_EXIT_ENV", "KFP_EXECUTOR", "in_kfp_executor", "install"]
