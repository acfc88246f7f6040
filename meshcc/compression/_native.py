"""Load a compression library's C extension without running its package's ``__init__``.

Why: the compile client pays every import on every compile. ``import zstandard`` costs
~16 ms (its ``__init__`` imports ``platform``, ``typing``, ``io`` and picks a backend),
``import lz4.frame`` ~2 ms; the C extensions under them (``zstandard.backend_c``,
``lz4.frame._frame``) load in ~0.3-0.7 ms and are all meshcc calls. The extension is
found where the installed package is (the import system's own finders, so a venv, the
user site or ``PYTHONPATH`` work as for ``import``), loaded by the interpreter's extension
loader and registered under its full name, so a later regular import of the package (the
daemon, a test) reuses it.

Anything unexpected (no such package, no extension file, an init that fails) returns None
and the caller falls back to the regular import, which is slower but always right.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - `types` costs ~0.4 ms at run time
    from types import ModuleType


def load_extension(package: str, name: str) -> ModuleType | None:
    """``package.name`` as a module (the C extension file only), or None."""
    full = f"{package}.{name}"
    loaded = sys.modules.get(full)
    if loaded is not None:
        return loaded
    try:
        import _imp
        from _frozen_importlib import ModuleSpec
        from _frozen_importlib_external import ExtensionFileLoader

        spec = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is not None:
                spec = find_spec(package, None)
                if spec is not None:
                    break
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return None
        from posix import stat

        parts = name.split(".")
        for directory in locations:
            base = "/".join([directory, *parts])
            for suffix in _imp.extension_suffixes():
                path = base + suffix
                try:
                    stat(path)
                except OSError:
                    continue
                module_spec = ModuleSpec(full, ExtensionFileLoader(full, path), origin=path)
                module = _imp.create_dynamic(module_spec)
                _imp.exec_dynamic(module)
                sys.modules[full] = module
                return module
    except Exception:  # noqa: BLE001 - any surprise: the regular import is the fallback
        return None
    return None
