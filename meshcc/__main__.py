"""``python -m meshcc`` is the ``meshcc`` command."""

import sys

from meshcc.frontend.entry import main

sys.exit(main())
