"""``python -m hf_tokenprune``: the ``hf-tokenprune`` command line."""

import sys

from .commands.main import main

sys.exit(main())
