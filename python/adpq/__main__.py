"""`python -m adpq ...` runs the adpq command line (see adpq.cli)."""
import sys

from .cli import main

sys.exit(main())
