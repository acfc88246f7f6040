"""Layer 6: front ends: the meshcc CLI, the daemon and the compile wrapper."""
