"""`python -m flannelette`: the same as the `flannelette` command."""

import sys

from flannelette.cli import main

sys.exit(main())
