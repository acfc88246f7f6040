"""distccd's log level NOTICE, between INFO and WARNING: its default, and where job
summaries go. Registered once here for the server, the mesh and the daemon's log setup."""

import logging

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
