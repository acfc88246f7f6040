"""meshcc: a zeroconf, peer-to-peer distributed C/C++ build mesh, wire-compatible with distcc."""

__version__ = "0.1.0"
