"""How the dense CRF's numba kernels compile: cached on disk where numba finds a writable place,
and a process's first compile announced.

numba caches a kernel in the package's ``__pycache__``; where that is not writable (a read-only
site-packages) in its per-user cache (``$XDG_CACHE_HOME/numba``, else ``~/.cache/numba``);
``NUMBA_CACHE_DIR`` overrides both. Where none is writable numba refuses to cache at all, failing
the import; the kernels then compile in every process instead. Nothing here touches the
environment.

Compiling takes 15-40 s (2 cores, measured) and numba is silent about it, so the first kernel
compile of a process is logged once, at INFO: numba's ``"numba:compile"`` event is sent on a
cache miss only, i.e. exactly when a kernel compiles.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numba
from numba.core import event

log = logging.getLogger(__name__)


def kernel(*, parallel: bool = False, **options: Any) -> Callable:
    """``numba.njit`` (nogil, and `options` such as fastmath) for a kernel, cached on disk
    where numba can write."""

    def compiled(fn: Callable) -> Callable:
        try:
            return numba.njit(fn, cache=True, nogil=True, parallel=parallel, **options)
        except RuntimeError as err:  # numba's "cannot cache function ...: no locator available"
            if "no locator available" not in str(err):
                raise
            return numba.njit(fn, nogil=True, parallel=parallel, **options)

    return compiled


class _FirstCompile(event.Listener):
    """Logs the first compile of one of this package's kernels, once per process (numba sends
    compile events under its global compiler lock, one at a time)."""

    announced = False

    def on_start(self, ev: event.Event) -> None:
        dispatcher = ev.data["dispatcher"]
        if _FirstCompile.announced or not dispatcher.py_func.__module__.startswith(__package__):
            return
        _FirstCompile.announced = True
        path = dispatcher._cache.cache_path  # numba's cache of that kernel; None if uncached
        if path is None:
            when = "in every process: no writable cache directory; set NUMBA_CACHE_DIR"
        else:
            when = f"once for these input types, cached in {path}"
        log.info(f"dense CRF: compiling numba kernels (15-40 s, {when})")

    def on_end(self, ev: event.Event) -> None:
        pass


_LISTENER = _FirstCompile()


@contextlib.contextmanager
def compiles_announced() -> Iterator[None]:
    """Within: the first kernel compile of the process is logged."""
    with event.install_listener("numba:compile", _LISTENER):
        yield
