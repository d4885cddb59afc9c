"""The vector row intrinsics (``rows.py``) against the float operations they replace, bit for
bit: numpy's float32 / float64 multiply and add round as the compiled code must; the softmax
against float64 numpy's."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from permutocrf.rows import blur_row, slice_point, softmax_row, splat_rows


@numba.njit
def _slice_all(values, vertex, weight, out):
    for i in range(out.shape[0]):
        slice_point(values, vertex, weight, i, out[i])


@numba.njit
def _splat_all(rows, own, base, vertex, weight, x, scale):
    for i in range(vertex.shape[0]):
        splat_rows(rows, own, base, vertex[i], weight[i], x[i], scale)


def _case(width: int, corners: int, dtype, weight_dtype=None, rows: int = 9, points: int = 5):
    rng = np.random.default_rng(width * 31 + corners)
    values = rng.normal(size=(rows, width)).astype(dtype)
    vertex = rng.integers(0, rows, (points, corners)).astype(np.int32)
    weight = rng.random((points, corners)).astype(weight_dtype or dtype)
    return values, vertex, weight


# Widths around the vector lanes (16 float32s, 8 float64s) and several blocks of them.
WIDTHS = (1, 3, 7, 8, 9, 11, 12, 15, 16, 17, 24, 31, 33, 40)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("corners", [(6,), (3, 6), (3, 6, 17)])
def test_slice_point_is_the_corner_sum_in_order(dtype, width, corners):
    # One to three kernels of different sizes and dimensions, summed kernel by kernel.
    cases = [_case(width, c, dtype, rows=9 + 4 * c) for c in corners]
    values, vertex, weight = (tuple(case[a] for case in cases) for a in range(3))
    out = np.full((vertex[0].shape[0], width), np.nan, dtype)
    _slice_all(values, vertex, weight, out)
    expected = np.zeros_like(out)
    for i in range(out.shape[0]):
        for v, c, w in zip(values, vertex, weight, strict=True):
            for r in range(c.shape[1]):
                expected[i] = expected[i] + w[i, r] * v[c[i, r]]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("own", [0, 2, 4])
def test_splat_rows_adds_into_each_corner_in_order(dtype, width, own):
    # Few rows, so that corners repeat within a point and across points; vertices below
    # ``own`` go to rows ``base + v`` past the vertex rows, the others to their own.
    values, vertex, weight = _case(width, 4, dtype, rows=4, points=7)
    base, scale = 5, dtype(0.3)
    x = np.random.default_rng(2).normal(size=(vertex.shape[0], width)).astype(dtype)
    rows = np.random.default_rng(3).normal(size=(base + own + 1, width)).astype(dtype)
    expected = rows.copy()
    _splat_all(rows, own, base, vertex, weight, x, scale)
    for i in range(vertex.shape[0]):
        for r in range(vertex.shape[1]):
            v = vertex[i, r]
            row = base + v if v < own else v
            expected[row] = expected[row] + weight[i, r] * (scale * x[i])
    np.testing.assert_array_equal(rows, expected)  # rows no corner maps to: unchanged


def test_splat_rows_refuses_a_scale_of_another_dtype():
    values, vertex, weight = _case(5, 3, np.float32)
    rows = np.zeros((9, 5), np.float32)
    with pytest.raises(numba.errors.TypingError):
        _splat_all(rows, 0, 0, vertex, weight, values[: vertex.shape[0]], 0.5)  # float64


def test_float32_weights_widen_for_float64_rows():
    values, vertex, weight = _case(11, 3, np.float64, weight_dtype=np.float32)
    out = np.empty((vertex.shape[0], 11))
    _slice_all((values,), (vertex,), (weight,), out)
    wide = weight.astype(np.float64)
    expected = sum(wide[:, r, None] * values[vertex[:, r]] for r in range(3))
    np.testing.assert_array_equal(out, expected)


def test_masked_lanes_leave_the_memory_beyond_a_row_alone():
    # Rows of 5 in a buffer: a vector of 16 lanes spans the next rows, which must not change.
    values, vertex, weight = _case(5, 2, np.float32)
    buffer = np.full((4, 5), 7.0, np.float32)
    _slice_all((values,), (vertex[:1],), (weight[:1],), buffer[1:2])
    assert (buffer[0] == 7).all() and (buffer[2:] == 7).all()


@numba.njit
def _slice_one(values, vertex, weight, i, out):
    slice_point(values, vertex, weight, i, out)


def _refused(values, vertex, weight, out, i=0) -> bool:
    try:
        _slice_one((values,), (vertex,), (weight,), i, out)
    except numba.errors.TypingError:
        return True
    return False


def test_the_typing_guard_refuses_what_would_change_or_break_results():
    values, vertex, weight = _case(8, 2, np.float32)
    out = np.zeros(8, np.float32)
    assert not _refused(values, vertex, weight, out)
    strided = np.zeros(16, np.float32)[::2]
    frozen = np.zeros(8, np.float32)
    frozen.setflags(write=False)
    assert _refused(values, vertex, weight, strided)  # not C-contiguous
    assert _refused(values, vertex, weight.astype(np.float64), out)  # would round first
    assert _refused(values, vertex, weight, out.astype(np.float64))  # mixed dtypes
    assert _refused(values, vertex.astype(np.float32), weight, out)  # float indices
    assert _refused(values, vertex, weight, frozen)  # read-only
    assert _refused(values, vertex[0], weight[0], out)  # one point's corners, not all points'
    assert _refused(values, vertex, weight, out, 0.0)  # not an index
    with pytest.raises(numba.errors.TypingError):  # kernels of two dtypes: not one tuple type
        _slice_one((values, values.astype(np.float64)), (vertex,) * 2, (weight,) * 2, 0, out)


@numba.njit
def _blur_all(src, dst, neighbours, half):
    for v in range(neighbours.shape[0]):
        blur_row(src, dst, v, neighbours[v, 0], neighbours[v, 1], half)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
def test_blur_row_is_the_three_tap_filter(dtype, width):
    rng = np.random.default_rng(width)
    src = rng.normal(size=(10, width)).astype(dtype)
    neighbours = rng.integers(0, 10, (10, 2))
    dst = np.full_like(src, np.nan)
    _blur_all(src, dst, neighbours, dtype(0.5))
    a, b = neighbours[:, 0], neighbours[:, 1]
    np.testing.assert_array_equal(dst, src + dtype(0.5) * (src[a] + src[b]))


def test_blur_row_refuses_a_half_of_another_dtype_and_leaves_other_rows_alone():
    src = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    neighbours = np.array([[1, 2]] * 6)
    with pytest.raises(numba.errors.TypingError):
        _blur_all(src, np.empty_like(src), neighbours, 0.5)  # a float64 half
    buffer = np.full((8, 5), 7.0, np.float32)
    _blur_all(src, buffer[1:7], neighbours, np.float32(0.5))
    assert (buffer[0] == 7).all() and (buffer[7] == 7).all()
    np.testing.assert_array_equal(buffer[1:7], src + np.float32(0.5) * (src[1] + src[2]))


@numba.njit
def _softmax_rows(x):
    for b in range(x.shape[0]):
        softmax_row(x[b])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 7, 8, 9, 11, 16, 17, 40])
def test_softmax_row_is_the_softmax_and_survives_underflow(dtype, k):
    # Widths within one vector (16 float32s, 8 float64s) and across several.
    x = 30 * np.random.default_rng(k).normal(size=(100, k))
    x[0] = np.array([0.0, -80, -90, -200, -1e30, 1e-3, -88] * 6)[:k]  # below the clamp at -80
    got = x.astype(dtype)
    _softmax_rows(got)
    expected = _softmax(x.astype(dtype).astype(np.float64))
    # float32: x - max rounds by |x| eps (3e-6 relative at -50); tiny terms matter absolutely.
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got, expected, **tol)


def test_softmax_row_keeps_a_nan_row_nan_and_the_memory_beyond_it():
    row = np.arange(11, dtype=np.float32)
    row[4] = np.nan
    _softmax_rows(row[None])
    assert np.isnan(row).all()
    buffer = np.full(40, 7.0, np.float32)  # 11 of a vector's 16 lanes written
    _softmax_rows(buffer[8:19].reshape(1, 11))
    assert (buffer[:8] == 7).all() and (buffer[19:] == 7).all()
    np.testing.assert_allclose(buffer[8:19], np.full(11, 1 / 11), rtol=1e-6)
    with pytest.raises(numba.errors.TypingError):
        _softmax_rows(np.zeros((2, 16), np.float32)[:, ::2])  # not C-contiguous
