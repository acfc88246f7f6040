"""Layer 4: the blocking client connection and the asyncio server connection."""
