"""Layer 1: sans-IO codecs: the distcc wire protocol (``protocol``) and the local control
protocol (``control``), on a shared value-record base (``records``). No sockets, no files.

Nothing is re-exported here: the compile client imports only the codec it needs."""
