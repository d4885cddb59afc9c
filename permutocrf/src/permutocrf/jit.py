"""How the dense CRF's numba kernels compile and run: cached on disk where numba finds a
writable place, a process's first compile announced, and on how many threads.

numba caches a kernel in the package's ``__pycache__``; where that is not writable (a read-only
site-packages) in its per-user cache (``$XDG_CACHE_HOME/numba``, else ``~/.cache/numba``);
``NUMBA_CACHE_DIR`` overrides both. Where none is writable numba refuses to cache at all, failing
the import; the kernels then compile in every process instead. Nothing here touches the
environment.

Compiling takes 15-40 s (2 cores, measured) and numba is silent about it, so the first kernel
compile of a process is logged once, at INFO: numba's ``"numba:compile"`` event is sent on a
cache miss only, i.e. exactly when a kernel compiles.

Threads: numba's setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); in a process that
has imported torch, torch's intra-op setting (``torch.set_num_threads``), capped at numba's
pool. numba's and torch's OpenMP calls then reach one runtime (torch's, loaded first), which
spins ~7 ms after each parallel region (``OMP_WAIT_POLICY=PASSIVE``, set before Python starts,
stops that).

Prefetch: the lattice's blur reads rows of vertex values at indices from a table, on fine
kernels mostly outside a core's L2 (1 MB here); the out-of-order core keeps only a few of those
misses in flight, so the blur asks for rows ahead (``prefetch``). In the point pass, whose rows
are mostly shared with the point before, prefetching gained nothing overall (one-off probe: a
little on fine kernels, a loss where the lattice fits in cache).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import numba
from llvmlite import ir
from numba.core import cgutils, event, types
from numba.extending import intrinsic

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


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


def threads() -> int:
    """Threads the kernels run on: torch's intra-op setting where torch is imported, capped at
    numba's pool; else numba's setting."""
    torch = sys.modules.get("torch")
    if torch is None:
        return numba.get_num_threads()
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def entry_point(run: Callable[P, R]) -> Callable[P, R]:
    """Run on `threads()` numba threads, a first compile announced, and leave torch's thread
    setting as it was: numba's OpenMP pool shares torch's runtime, and its first parallel call
    set torch to every core (measured: torch.set_num_threads(1), one dense_crf, then
    torch.get_num_threads() == 2)."""

    @functools.wraps(run)
    def kept(*args: P.args, **kwargs: P.kwargs) -> R:
        torch = sys.modules.get("torch")
        torch_threads = None if torch is None else torch.get_num_threads()
        numba.set_num_threads(threads())
        try:
            with compiles_announced():
                return run(*args, **kwargs)
        finally:
            if torch_threads is not None and torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)

    return kept


@intrinsic
def prefetch(typingctx, array, index):  # pragma: no cover - compiled into the kernels
    """Hint that ``array[index]`` will be read soon (``index`` an integer for a 1-D array, a
    tuple of as many integers as the array has dimensions otherwise): LLVM's prefetch (read,
    keep in all cache levels) of its cache line; no effect on any value, no bounds check, so an
    index out of range is harmless. (``benchmarks/dense_crf_paths.py`` times the blur's use of
    it against the blur without.)"""
    if not isinstance(array, types.Array):
        return None
    parts = list(index) if isinstance(index, types.BaseTuple) else [index]
    if len(parts) != array.ndim or not all(isinstance(t, types.Integer) for t in parts):
        return None

    def codegen(context, builder, signature, args):
        arrty, indexty = signature.args
        arr = context.make_array(arrty)(context, builder, args[0])
        if isinstance(indexty, types.BaseTuple):
            values = cgutils.unpack_tuple(builder, args[1], len(indexty))
            pairs = zip(values, indexty, strict=True)
        else:
            pairs = [(args[1], indexty)]
        index = [context.cast(builder, v, t, types.intp) for v, t in pairs]
        ptr = cgutils.get_item_pointer(context, builder, arrty, arr, index, wraparound=False)
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        flags = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]  # read, L1-L3, data
        builder.call(fn, [builder.bitcast(ptr, byte), *flags])
        return context.get_dummy_value()

    return types.void(array, index), codegen
