"""``python -m metabridge`` is the ``metabridge`` command."""
import sys

from metabridge.cli import main

sys.exit(main())
