"""The dense CRF's mean-field against what two of its choices replaced, side by side on a
CamVid frame.

Usage: python -m benchmarks.dense_crf_paths [--camvid DIR] [--repeats 15] [--json JSON]

The fused mean-field (`meanfield_numba.mean_field`) on the frame's Gaussian and bilateral
lattices (built once, outside the timing), at `dense_crf_params`' three parameter sets, on 2
and 1 threads; each row a pair timed with repeats interleaved, medians:
  blur prefetch  the blur asking for its neighbours' rows 16 vertices ahead (`jit.prefetch`)
                 against the same blur without it
  vector rows    the point pass and the blur with `rows.py`'s masked-vector row operations
                 (slice, softmax, splat, blur) against the same kernels recompiled with plain
                 loops over a row's columns
  scratch memory the whole `dense_crf` call (lattice build included) with its temporaries in
                 `scratch.py`'s memory, kept between calls, against fresh arrays each call
with the largest difference of each pair's marginals. Prints a table and the machine; writes
JSON.
"""

from __future__ import annotations

import argparse
import functools
import math
import types
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from unittest import mock

import numba
import numpy as np
import torch

from benchmarks.common import CAMVID, commit, describe, machine, timed
from benchmarks.dense_crf import load_frames
from benchmarks.dense_crf_params import parameter_sets
from permutocrf import (
    bilateral_kernel,
    dense_crf,
    gaussian_kernel,
    lattice_numba,
    meanfield_numba,
    unary_scores,
)
from permutocrf.rows import _EXP2, blur_row
from piecewise_crf.files import write_json


@numba.njit(parallel=True, nogil=True, cache=True)
def plain_blur(values, spare, neighbours):  # pragma: no cover - compiled
    """`lattice_numba._blur` without its prefetch."""
    axes, m, _ = neighbours.shape
    half = values.dtype.type(0.5)
    src, dst = values, spare
    src[m] = 0.0
    dst[m] = 0.0
    for axis in range(axes):
        for v in numba.prange(m):
            blur_row(src, dst, v, neighbours[axis, v, 0], neighbours[axis, v, 1], half)
        src, dst = dst, src


@numba.njit(inline="always")
def loop_slice_point(values, vertex, weight, i, out):  # pragma: no cover - compiled
    """`rows.slice_point` as plain loops over the columns."""
    out[:] = 0.0
    for kernel in range(len(values)):
        for r in range(vertex[kernel].shape[1]):
            row = values[kernel][vertex[kernel][i, r]]
            for j in range(out.shape[0]):
                out[j] += weight[kernel][i, r] * row[j]


@numba.njit(inline="always")
def loop_splat_rows(rows, own, base, vertex, weight, x, scale):  # pragma: no cover - compiled
    """`rows.splat_rows` as plain loops over the columns."""
    for r in range(vertex.shape[0]):
        v = vertex[r]
        row = rows[base + v if v < own else v]
        for j in range(x.shape[0]):
            row[j] += weight[r] * (scale * x[j])


@numba.njit(inline="always")
def loop_softmax_row(x):  # pragma: no cover - compiled
    """`rows.softmax_row` as plain loops over the labels, float32 (the frames' dtype), by
    `rows._exp`'s polynomial; its sum in label order."""
    f32 = np.float32
    top = x[0]
    for j in range(1, x.shape[0]):
        top = max(top, x[j])
    total = f32(0.0)
    for j in range(x.shape[0]):
        u = max(x[j] - top, f32(-80.0)) * f32(1.4426950408889634)
        e = np.floor(u + f32(0.5))
        frac = u - e
        p = f32(_EXP2[5])
        for c in (_EXP2[4], _EXP2[3], _EXP2[2], _EXP2[1], _EXP2[0], 1.0):
            p = p * frac + f32(c)
        x[j] = f32(p * math.ldexp(1.0, int(e)))
        total += x[j]
    for j in range(x.shape[0]):
        x[j] *= f32(1.0) / total


@numba.njit(inline="always")
def loop_blur_row(src, dst, v, a, b, half):  # pragma: no cover - compiled
    """`rows.blur_row` as a plain loop over the columns."""
    for j in range(src.shape[1]):
        dst[v, j] = src[v, j] + half * (src[a, j] + src[b, j])


def recompiled(dispatcher, parallel: bool, **names) -> Callable:
    """A library kernel compiled again (uncached) with some of the functions it calls
    replaced: the same source, so that a pair differs in those functions alone."""
    fn = dispatcher.py_func
    scope = fn.__globals__ | names
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    return numba.njit(copy, parallel=parallel, nogil=True)


@functools.cache
def loop_kernels() -> tuple[Callable, Callable]:
    """The mean-field's point pass and the blur recompiled with plain row loops."""
    chunk = recompiled(
        meanfield_numba._pass_chunk,
        False,
        slice_point=loop_slice_point,
        softmax_row=loop_softmax_row,
        splat_rows=loop_splat_rows,
    )
    return (
        recompiled(meanfield_numba._point_pass, True, _pass_chunk=chunk),
        recompiled(lattice_numba._blur, True, blur_row=loop_blur_row),
    )


def loop_rows() -> AbstractContextManager:
    """The mean-field with `loop_kernels`."""
    point_pass, blur = loop_kernels()
    stack = ExitStack()
    stack.enter_context(mock.patch.object(meanfield_numba, "_point_pass", point_pass))
    stack.enter_context(mock.patch.object(meanfield_numba, "_blur", blur))
    return stack


def fresh_scratch() -> AbstractContextManager:
    """`scratch.scratch` replaced by a fresh array each call."""
    stack = ExitStack()
    fresh = lambda name, shape, dtype: np.empty(shape, dtype)  # noqa: E731
    for module in (lattice_numba, meanfield_numba):
        stack.enter_context(mock.patch.object(module, "scratch", fresh))
    return stack


REFERENCES: dict[str, Callable[[], AbstractContextManager]] = {
    "blur prefetch": lambda: mock.patch.object(meanfield_numba, "_blur", plain_blur),
    "vector rows": loop_rows,
    "scratch memory": fresh_scratch,
}
WHOLE_CALL = {"scratch memory"}  # timed as `dense_crf`, not the mean-field alone


def pair(frame: tuple, kernels: list, params: dict, it: int, change: str, repeats: int):
    """Median ms of the mean-field (or the whole call, `WHOLE_CALL`) as it is and with `change`
    undone, and their largest |dQ|."""
    image, probs = frame
    logp = unary_scores(probs).reshape(probs.shape[0], -1)
    weights = [float(params["pos_weight"]), float(params["bi_weight"])]

    def run(side: Callable[[], AbstractContextManager]) -> Callable[[], np.ndarray]:
        def once() -> np.ndarray:
            with side():
                if change in WHOLE_CALL:
                    return dense_crf(image, probs, iterations=it, **params)
                return meanfield_numba.mean_field(logp.copy(), kernels, weights, it, None)

        return once

    sides = {"new": run(nullcontext), "reference": run(REFERENCES[change])}
    t = timed(sides, repeats)
    diff = float(np.abs(sides["new"]() - sides["reference"]()).max())
    return {
        "new_ms": 1e3 * t["new"],
        "reference_ms": 1e3 * t["reference"],
        "ratio": t["new"] / t["reference"],
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/dense_crf_paths.json"
    )
    args = parser.parse_args()
    image, probs = load_frames(args.camvid, 1, 11)[0]
    k, h, w = probs.shape
    threads = torch.get_num_threads()
    rows = []
    for name, (p, it) in parameter_sets().items():
        kernels = [
            gaussian_kernel(h, w, p["pos_xy_std"]),
            bilateral_kernel(image, p["bi_xy_std"], p["bi_rgb_std"]),
        ]
        for n in (threads, 1):
            torch.set_num_threads(n)
            for change in REFERENCES:
                row = {"set": name, "threads": n, "change": change, "iterations": it}
                rows.append(row | pair((image, probs), kernels, p, it, change, args.repeats))
    torch.set_num_threads(threads)
    results = {
        "machine": machine(),
        "commit": commit(),
        "size": [w, h],
        "labels": k,
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"machine: {describe(results['machine'])}; {w}x{h}, K={k}")
    print(f"{'set':<18}{'threads':>8}  {'change':<14}{'new ms':>8}{'ref ms':>8}{'ratio':>7}")
    for r in rows:
        print(
            f"{r['set']:<18}{r['threads']:>8}  {r['change']:<14}{r['new_ms']:8.1f}"
            f"{r['reference_ms']:8.1f}{r['ratio']:7.2f}"
        )
    write_json(results, args.json)


if __name__ == "__main__":
    main()
