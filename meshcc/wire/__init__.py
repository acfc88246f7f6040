"""Layer 1: sans-IO codec for the distcc wire protocol (no sockets, no files)."""
