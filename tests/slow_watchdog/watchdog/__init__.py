"""A stand-in for ``watchdog`` whose import blocks until $HOLLOW_TEST_GATE exists (tests/test_first_hour.py,
item 15), then hands over to the real package: a slow import, made as slow as the test needs."""

import os
import sys
import time

_gate = os.environ["HOLLOW_TEST_GATE"]
with open(_gate + ".waiting", "w"):
    pass
while not os.path.exists(_gate):
    time.sleep(0.01)
sys.path.remove(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
del sys.modules["watchdog"]
import watchdog as _real  # noqa: E402 - the installed package, now that this directory is off the path

sys.modules["watchdog"] = _real
