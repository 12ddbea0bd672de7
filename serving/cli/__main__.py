"""``python -m serving.cli``: the ``cascade`` command."""

import sys

from serving.cli import main

sys.exit(main())
