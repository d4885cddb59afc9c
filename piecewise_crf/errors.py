"""Errors whose fix is another argument: worded with Python's parameter names or a command's flags.

Library code never names a command-line flag. Where the fix is "pass another `limit`", it raises
`ArgumentError` with a message that names the parameter through a function; `str(err)` calls
it with the parameter's Python name, and `piecewise-crf` with the flag of the command at hand
(`--limit`), so both audiences read the fix in their own words.
"""

from __future__ import annotations

from collections.abc import Callable

Words = Callable[[Callable[[str], str]], str]


class ArgumentError(ValueError):
    """A bad argument; `words(name)` is the message, `name("limit")` how a parameter is spelt.

    Built from a plain string too (that is how DataLoader workers and pickle rebuild it).
    """

    def __init__(self, words: Words | str) -> None:
        self.words: Words = words if callable(words) else (lambda name: words)
        super().__init__(self.words(str))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (str(self),)
