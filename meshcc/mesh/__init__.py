"""Layer 5: announcement, browsing, the peer table, liveness, allowed subnets."""
