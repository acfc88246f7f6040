"""The immutable value-class base both codecs share (a cheap frozen dataclass).

The compile client builds and reads these records on every compile; ``dataclasses`` costs
several milliseconds to import, a slotted class with these few methods costs nothing.
"""

from __future__ import annotations


class Frozen:
    """Base for immutable slotted value classes; ``__match_args__`` names the fields."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()  # the fields, in order

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frozen) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__match_args__)
        return f"{self.__class__.__name__}({fields})"

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # pickle/copy would otherwise restore slots through __setattr__.
        return (self.__class__, self._values())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def _init(self, *values: object) -> None:
        """Set every field once, in ``__match_args__`` order (for ``__init__``)."""
        for name, value in zip(self.__match_args__, values, strict=True):
            object.__setattr__(self, name, value)
