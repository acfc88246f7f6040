"""The mesh's result cache: a compile done once anywhere in the mesh is not done again.

- :mod:`meshcc.cache.key`      the content key of a job, and which jobs are uncacheable (pure)
- :mod:`meshcc.cache.identity` the identity of a toolchain's binaries (hashed once)
- :mod:`meshcc.cache.store`    entries on disk: hash-checked, atomic, LRU-bounded
- :mod:`meshcc.cache.remote`   the home peer of a key (rendezvous hashing) and its HTTP calls
- :mod:`meshcc.cache.service`  what the compile server calls: recall a result, remember one

Layer: above ``compiler`` (the server's rewrite rules define the normalised command line),
below ``transport`` (the compile server holds an optional :class:`ResultCache`).
"""
