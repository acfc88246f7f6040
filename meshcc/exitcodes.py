"""distcc's exit codes (``exitcode.h``): the one home for them in meshcc.

Scripts, make and Portage key on these numbers, so the client, the server and the daemon
use distcc's values and names; a compile that ran returns the compiler's own status.
"""

EXIT_DISTCC_FAILED = 100  # a generic failure
EXIT_BAD_ARGUMENTS = 101  # bad options (also a daemon started with bad options)
EXIT_BIND_FAILED = 102  # the daemon could not listen
EXIT_CONNECT_FAILED = 103  # the client could not connect to a server
EXIT_COMPILER_CRASHED = 104
EXIT_OUT_OF_MEMORY = 105
EXIT_BAD_HOSTSPEC = 106
EXIT_IO_ERROR = 107
EXIT_TRUNCATED = 108  # the peer closed mid-message
EXIT_PROTOCOL_ERROR = 109
EXIT_COMPILER_MISSING = 110
EXIT_RECURSION = 111  # the wrapper found itself instead of the real compiler
EXIT_SETUID_FAILED = 112  # the daemon could not drop root
EXIT_ACCESS_DENIED = 113  # a client outside the allowed networks
EXIT_BUSY = 114
EXIT_NO_SUCH_FILE = 115
EXIT_NO_HOSTS = 116  # nowhere to compile and local fallback is off
EXIT_GONE = 117
EXIT_TIMEOUT = 118
