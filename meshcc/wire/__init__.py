"""Layer 1: sans-IO codecs: the distcc wire protocol (``protocol``) and the local control
protocol (``control``). No sockets, no files."""

from .protocol import *  # noqa: F403 - the distcc codec is this package's public API
from .protocol import __all__  # noqa: F401 - re-exported: the package exports what the codec does
