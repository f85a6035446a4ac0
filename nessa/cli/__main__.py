"""``python -m nessa.cli``: the ``nessa`` command."""

from __future__ import annotations

import sys

from nessa.cli import main

sys.exit(main())
