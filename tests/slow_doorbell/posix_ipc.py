"""A stand-in for ``posix_ipc`` whose semaphore creation blocks until $HOLLOW_TEST_GATE exists
(tests/test_first_hour.py, item 15): a doorbell that takes as long to make as the test needs.
Everything else is the real package's."""

import os
import sys
import time

_me = sys.modules["posix_ipc"]
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
del sys.modules["posix_ipc"]
import posix_ipc as _real  # noqa: E402 - the installed package, now that this directory is off the path

_gate = os.environ["HOLLOW_TEST_GATE"]


def Semaphore(name, flags=0, *args, **kwargs):  # (the real name)
    if flags & _real.O_CREAT:  # a doorbell being made
        with open(_gate + ".doorbell", "w"):
            pass
        while not os.path.exists(_gate):
            time.sleep(0.01)
    return _real.Semaphore(name, flags, *args, **kwargs)


for _name in dir(_real):
    if not _name.startswith("__") and _name != "Semaphore":
        globals()[_name] = getattr(_real, _name)

sys.modules["posix_ipc"] = _me  # what ``import posix_ipc`` gives from now on
