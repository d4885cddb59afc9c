"""Names that configs use for things users can add: backbones, datasets, relations.

One `Registry` per kind; `@REGISTRY.register("name")` adds an entry and `REGISTRY[name]` looks
one up. Every "unknown name" in piecewise-crf, config keys and choices included, is worded by
`unknown`, so each one ends with the closest valid name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: object, options: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the option closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(options), n=1) if isinstance(name, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, name: object, options: Iterable[str], *, shown: str | None = None) -> str:
    """The message for a name that is not one of `options`: "unknown backbone 'x'; did you mean
    'y'?", or the valid names when none is close. `shown` replaces the name in the message
    (e.g. a config key's whole path), as it is."""
    options = list(options)
    hint = did_you_mean(name, options) or (f"; valid: {', '.join(options)}" if options else "")
    return f"unknown {kind} {shown if shown is not None else repr(name)}{hint}"


class Registry(Generic[T]):
    """Named entries of one kind (a class or a factory each), in the order they were added."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "backbone", "dataset", "relation": how messages name an entry
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@BACKBONES.register("resnet_os16")` makes the name usable in configs."""

        def add(entry: T) -> T:
            if self._entries.get(name, entry) is not entry:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(unknown(self.kind, name, self._entries))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
