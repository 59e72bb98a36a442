"""`python -m herald` is the `herald` command."""

import sys

from herald.cli import main

sys.exit(main())
