"""Scratch arrays that keep their memory between calls, one set per thread.

A dense CRF on a CamVid frame needs some 70 MB of temporaries (the mean-field's vertex rows,
the lattice build's simplices and hash numbers, ``dense_crf``'s bilateral lattice of each
image). Fresh from the allocator, each call pays for
their pages again once the C library has handed freed memory back to the system: on this
project's 2-core VM 9,000 page faults a call, 25-30 ms of 105 at the fine CamVid kernel
(measured: the same calls with glibc told never to give memory back took 105 ms instead of
135). A named scratch array reuses the memory of the last array of that name on its thread.

Only temporaries that die before their call returns are scratch: nothing handed to the caller
(marginals, a lattice) lives in it. Each name has one user at a time (no function that takes
one calls another that takes the same). A thread keeps at most ``LIMIT`` bytes; larger
temporaries are allocated fresh each call, as before. ``release()`` frees a thread's.
"""

from __future__ import annotations

import threading

import numpy as np

LIMIT = 256 * 2**20
"""Bytes of scratch a thread keeps between calls (a 480x360 frame, 11 labels, the CamVid recipe's
kernels: 72 MB)."""

_GRAIN = 2**20  # buffers grow by whole MiB, so that frames of nearby sizes share them


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.named: dict[str, np.ndarray] = {}


_BUFFERS = _Buffers()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` in the memory of this
    thread's scratch ``name``, grown if too small (kept while the thread's total stays within
    ``LIMIT``)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    named = _BUFFERS.named
    buffer = named.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        named.pop(name, None)
        buffer = np.empty(-(-max(nbytes, 1) // _GRAIN) * _GRAIN, np.uint8)
        if kept() + buffer.nbytes <= LIMIT:
            named[name] = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def kept() -> int:
    """Bytes of scratch this thread keeps."""
    return sum(b.nbytes for b in _BUFFERS.named.values())


def release() -> None:
    """Free this thread's scratch memory."""
    _BUFFERS.named.clear()
