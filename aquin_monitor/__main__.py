"""``python -m aquin_monitor`` = the ``aquin-monitor`` command (and what ``torchrun -m aquin_monitor ...`` starts on
every rank)."""

import sys

from .cli import main

sys.exit(main())
