"""`python -m assimilax.cli`: the `assimilax` command."""

import sys

from . import main


sys.exit(main())
