"""Ctrl-C and SIGTERM end a process as a KeyboardInterrupt, every time.

A Python signal handler runs at whatever bytecode the main thread has reached, and that may be inside
a weakref callback or a `__del__` that the garbage collector is running (seen: SQLAlchemy's
`_collection_gced`, collected during `import torch._dynamo`). An exception raised there does not
propagate: Python hands it to `sys.unraisablehook` and drops it. A stage whose parent died (its
parent-death SIGTERM) then trained on as an orphan holding its lock, and `cem repro`'s SIGTERM could be
lost the same way. So a KeyboardInterrupt dropped like that is delivered again, to the main thread, a
moment later, when the collector is done; if that one lands in a callback too, it is delivered again.

Also here: `end_with_parent`, which makes a process get a signal when the one that started it dies.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

REDELIVER_SECONDS = 0.05
"""How long after a dropped KeyboardInterrupt it is delivered again: a collection pass is done by then."""

_received: Optional[int] = None
_raised = 0  # KeyboardInterrupts raised by _terminate so far
_previous_hook: Optional[Callable] = None


def _terminate(signum, frame):
    global _received, _raised
    _received = signum
    _raised += 1
    raise KeyboardInterrupt


def _deliver(signum: int, raised: int) -> None:
    if raised != _raised:  # a newer one was raised since: it is on its way (or has its own timer)
        return
    main = threading.main_thread()
    if main.is_alive() and main.ident is not None:
        signal.pthread_kill(main.ident, signum)  # to the main thread: it interrupts a blocking call there


def _redeliver_dropped(unraisable) -> None:
    """sys.unraisablehook: a KeyboardInterrupt a callback swallowed is sent again; anything else goes
    to the hook that was there before."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        if _received is not None and signal.getsignal(_received) is _terminate:
            signum = _received
        elif signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signum = signal.SIGINT
        else:
            signum = None
        if signum is not None:
            timer = threading.Timer(REDELIVER_SECONDS, _deliver, (signum, _raised))
            timer.daemon = True
            timer.start()
            return
    (_previous_hook or sys.__unraisablehook__)(unraisable)


def end_like_ctrl_c(signum: int = signal.SIGTERM):
    """Make `signum` raise KeyboardInterrupt in the main thread (as Ctrl-C does), and make sure a
    KeyboardInterrupt that a garbage-collector callback swallowed still arrives. Returns the handler
    that was there before, for `signal.signal` to put back."""
    global _previous_hook
    if sys.unraisablehook is not _redeliver_dropped:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _redeliver_dropped
    return signal.signal(signum, _terminate)


def end_with_parent(signum: int = signal.SIGTERM) -> None:
    """Linux: `signum` when the process that started this one dies, even by SIGKILL (a stage gets
    SIGTERM and ends like Ctrl-C; a helper process that holds nothing gets SIGKILL), so nothing runs on
    as an orphan. A parent that died before the call counts: the signal comes at once. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)
    except (OSError, AttributeError):
        pass
