"""Herald's tests.

The daemon's slow waits (herald.timing: how often a missing device is tried again, when a
device call counts as stuck, how often that is checked) run at half their length in every
test and every daemon the tests start (they inherit the environment), so the tests that wait
for them wait less; the tests read the same, scaled constants. Set before any test imports
herald; only under pytest (the benchmark measures the daemon as it ships).
"""

import os
import sys

if "pytest" in sys.modules:  # a test run: not the benchmark, which imports tests' helpers too
    os.environ["HERALD_TIME_SCALE"] = "0.5"
