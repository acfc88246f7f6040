"""Layer 3: compiler knowledge: argv analysis, server policy, host specs, toolchains."""
