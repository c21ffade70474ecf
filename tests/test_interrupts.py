"""A SIGTERM that lands inside a garbage-collector callback still ends the process like Ctrl-C.

Each case runs in its own Python process (signal handlers and sys.unraisablehook are process-wide)."""
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

PRELUDE = """
import gc, os, signal, sys, time, weakref
from pipeline import interrupts
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if started with it ignored

class Thing:
    pass

def signal_inside_a_callback(signum):
    # the handler runs at the next bytecode: inside this weakref callback, where Python drops what it raises
    def callback(ref):
        os.kill(os.getpid(), signum)
        for _ in range(100):
            pass
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    return ref
"""


def _run(body: str) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _signal_in_a_callback(setup: str, signum: str, wait: float) -> subprocess.CompletedProcess:
    """After `setup`, `signum` lands inside a weakref callback; then the main thread blocks for `wait` s."""
    return _run(setup + f"""
try:
    signal_inside_a_callback(signal.{signum})
    time.sleep({wait})  # a blocking call in the main thread: a redelivery must interrupt it
    print("ran on")
except KeyboardInterrupt:
    print("interrupted")
""")


HOOKED = "interrupts.end_like_ctrl_c(signal.SIGTERM)\n"  # SIGINT keeps Python's own handler


def test_a_sigterm_dropped_by_a_callback_is_delivered_again():
    proc = _signal_in_a_callback(HOOKED, "SIGTERM", 10)
    assert proc.stdout.strip() == "interrupted", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr  # handled, not reported as a dropped exception


def test_a_ctrl_c_dropped_by_a_callback_is_delivered_again():
    proc = _signal_in_a_callback(HOOKED, "SIGINT", 10)
    assert proc.stdout.strip() == "interrupted", proc.stdout + proc.stderr


def test_without_the_hook_python_drops_it():
    """The failure this module exists for: a plain raising handler loses the interrupt."""
    plain = "def plain(signum, frame):\n    raise KeyboardInterrupt\nsignal.signal(signal.SIGTERM, plain)\n"
    proc = _signal_in_a_callback(plain, "SIGTERM", 0.5)
    assert proc.stdout.strip() == "ran on"
    assert "KeyboardInterrupt" in proc.stderr


def test_one_that_arrived_is_not_delivered_twice():
    """After an interrupt that propagated, the clean-up it starts is not interrupted again."""
    proc = _run("""
        interrupts.end_like_ctrl_c(signal.SIGTERM)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            time.sleep(0.5)  # the clean-up: longer than a redelivery would wait
            print("cleaned up")
    """)
    assert proc.stdout.strip() == "cleaned up", proc.stdout + proc.stderr


def test_other_dropped_exceptions_still_reach_the_previous_hook():
    proc = _run("""
        seen = []
        sys.unraisablehook = lambda u: seen.append(u.exc_type.__name__)
        interrupts.end_like_ctrl_c(signal.SIGTERM)
        class Bad:
            def __del__(self):
                raise ValueError("in __del__")
        Bad()
        gc.collect()
        print(seen)
    """)
    assert proc.stdout.strip() == "['ValueError']", proc.stdout + proc.stderr
