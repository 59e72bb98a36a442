"""Herald's tests.

The daemon's slow waits (herald.timing: how often a missing device is tried again, when a
device call counts as stuck, how often that is checked) run at half their length in every
test and every daemon the tests start (they inherit the environment), so the tests that wait
for them wait less; the tests read the same, scaled constants. Set before any test imports
herald.
"""

import os

os.environ["HERALD_TIME_SCALE"] = "0.5"
