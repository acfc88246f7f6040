"""``python -m meshcc`` is the ``meshcc`` command."""

import sys

from meshcc.cli.entry import main

# argv[0] is this file's path; the wrapper reads argv[0] to tell `meshcc gcc -c x.c`
# (explicit mode) from a masquerade link, so name the command it stands for.
sys.argv[0] = "meshcc"
sys.exit(main())
