"""Row operations of the lattice kernels, compiled to masked 64-byte vectors (numba intrinsics).

A vertex row holds one value per label (11 for CamVid): too short for LLVM's loop vectoriser,
which in numba's code also cannot tell a point's running sum apart from the rows it reads, so
the plain loops went element by element with the sum in memory. Here a row is one masked vector
load, multiply, add and store per 16 float32s (8 float64s), and a point's sum over its
simplex's corners (over every kernel's: ``slice_point``) stays in a register. Every element sees
the same float operations in the same order as in the plain loops (``tests/test_rows.py``
compares them bit for bit), so results are unchanged; the one exception is ``softmax_row``'s
sum, a tree within a vector. ``benchmarks/dense_crf_paths.py`` times the mean-field against
plain loops.

No bounds checks, as numba's own indexing: callers pass C-contiguous arrays and vertex indices
of their lattice. Without AVX-512, LLVM lowers the masked operations to AVX's masked moves or to
scalar code.
"""

from __future__ import annotations

from collections.abc import Iterator

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_I32 = ir.IntType(32)
VECTOR_BYTES = 64
"""Bytes of the row operations' vectors (AVX-512's)."""


class _Vectors:
    """Masked loads and stores of 64-byte vectors of one float dtype, emitted by ``builder``."""

    def __init__(self, builder: ir.IRBuilder, dtype: types.Float) -> None:
        self.builder = builder
        self.lanes = 8 * VECTOR_BYTES // dtype.bitwidth
        scalar = ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()
        self.type = ir.VectorType(scalar, self.lanes)
        mask = ir.VectorType(ir.IntType(1), self.lanes)
        pointer = self.type.as_pointer()
        # Typed-pointer mangling (p0v16f32), as llvmlite writes pointers; newer LLVMs rename it.
        vector = f"v{self.lanes}f{dtype.bitwidth}"
        suffix = f"{vector}.p0{vector}"
        load = ir.FunctionType(self.type, [pointer, _I32, mask, self.type])
        store = ir.FunctionType(ir.VoidType(), [self.type, pointer, _I32, mask])
        module = builder.module
        self._load = cgutils.get_or_insert_function(module, load, f"llvm.masked.load.{suffix}")
        self._store = cgutils.get_or_insert_function(module, store, f"llvm.masked.store.{suffix}")
        self._align = ir.Constant(_I32, dtype.bitwidth // 8)
        self.zero = ir.Constant(self.type, None)

    def broadcast(self, value: ir.Value, vector: ir.VectorType | None = None) -> ir.Value:
        """``value`` in every lane."""
        vector = vector or self.type
        one = self.builder.insert_element(
            ir.Constant(vector, ir.Undefined), value, ir.Constant(_I32, 0)
        )
        lanes = ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), lanes)

    def load(self, pointer: ir.Value, mask: ir.Value) -> ir.Value:
        ptr = self.builder.bitcast(pointer, self.type.as_pointer())
        return self.builder.call(self._load, [ptr, self._align, mask, self.zero])

    def store(self, value: ir.Value, pointer: ir.Value, mask: ir.Value) -> None:
        ptr = self.builder.bitcast(pointer, self.type.as_pointer())
        self.builder.call(self._store, [value, ptr, self._align, mask])

    def columns(self, width: ir.Value) -> Iterator[tuple[ir.Value, ir.Value]]:
        """Emit a loop over a row's blocks of columns: (first column, mask of the block's
        columns below ``width``) for the body."""
        intp = width.type
        zero, step = ir.Constant(intp, 0), ir.Constant(intp, self.lanes)
        with cgutils.for_range_slice(self.builder, zero, width, step, intp) as (start, _):
            remaining = self.broadcast(
                self.builder.sub(width, start), ir.VectorType(intp, self.lanes)
            )
            lane = ir.Constant(
                ir.VectorType(intp, self.lanes), [ir.Constant(intp, i) for i in range(self.lanes)]
            )
            yield start, self.builder.icmp_signed("<", lane, remaining)


def _corners(context, builder, signature, args, *, rows_at: int, vertex_at: int):
    """The arrays of an intrinsic's arguments, its vector helper, the row width (the rows
    array's second axis) and the number of corners (the vertex row's length)."""
    arrays = [
        context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else a
        for t, a in zip(signature.args, args, strict=True)
    ]
    rows_type = signature.args[rows_at]
    vec = _Vectors(builder, rows_type.dtype)
    width = builder.extract_value(arrays[rows_at].shape, 1)
    corners = builder.extract_value(arrays[vertex_at].shape, 0)
    return arrays, vec, width, corners


def _corner(context, builder, signature, arrays, loop, *, vertex_at: int, weight_at: int):
    """Corner ``loop.index``'s vertex (intp) and weight (in the rows' dtype)."""
    kinds, rows = signature.args, signature.args[0].dtype
    v = _element(context, builder, arrays[vertex_at], kinds[vertex_at], loop.index, types.intp)
    w = _element(context, builder, arrays[weight_at], kinds[weight_at], loop.index, rows)
    return v, w


def _typed(rows, vertex, weight, vector, written, *, points: bool = False) -> bool:
    """Whether the arguments are what the row intrinsics take: C-contiguous (M, C) float rows,
    integer vertices and float weights no wider than the rows' dtype (a wider one would round
    before the product, where the plain loops rounded after), (d+1,) for one point or
    (P, d+1) for all of them (``points``), and a (C,) vector of the rows' dtype; ``written``,
    the rows or the vector, writable. The lengths are not checked: the vector must be C long."""
    arrays = (rows, vertex, weight, vector)
    corners = 2 if points else 1
    return (
        all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
        and (rows.ndim, vertex.ndim, weight.ndim, vector.ndim) == (2, corners, corners, 1)
        and isinstance(rows.dtype, types.Float)
        and vector.dtype == rows.dtype
        and isinstance(vertex.dtype, types.Integer)
        and isinstance(weight.dtype, types.Float)
        and weight.dtype.bitwidth <= rows.dtype.bitwidth
        and written.mutable
    )


@intrinsic
def slice_point(typingctx, values, vertex, weight, i, out):  # pragma: no cover
    """Point i's slice from every kernel: ``out = sum_k sum_r weight_k[i, r]
    values_k[vertex_k[i, r]]``, the kernels and their corners r in order, the running sum in a
    register (``out`` stored once: a masked store read back at once, to add the next kernel or
    by scalar loads, stalled the mean-field's point pass, perf). ``values``, ``vertex`` and
    ``weight`` are tuples, one entry per kernel, of (M_k, C) rows and (P, d_k+1) corners and
    weights; ``out`` (C,) (``_typed``)."""
    if not (
        all(isinstance(t, types.UniTuple) for t in (values, vertex, weight))
        and len(values) == len(vertex) == len(weight)
        and _typed(values.dtype, vertex.dtype, weight.dtype, out, out, points=True)
        and isinstance(i, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        tuples = [cgutils.unpack_tuple(builder, a) for a in args[:3]]
        kinds = [t.dtype for t in signature.args[:3]]
        kernels = [
            [context.make_array(kind)(context, builder, a) for a in arrays]
            for kind, arrays in zip(kinds, tuples, strict=True)
        ]
        target = context.make_array(signature.args[4])(context, builder, args[4])
        point = context.cast(builder, args[3], signature.args[3], types.intp)
        vec = _Vectors(builder, kinds[0].dtype)
        width = builder.extract_value(target.shape, 0)
        for start, mask in vec.columns(width):
            total = cgutils.alloca_once_value(builder, vec.zero)
            for rows, corner, weights in zip(*kernels, strict=True):
                stride = builder.extract_value(rows.shape, 1)
                corners = builder.extract_value(corner.shape, 1)
                first = builder.mul(point, corners)
                with cgutils.for_range(builder, corners, intp=width.type) as loop:
                    at = builder.add(first, loop.index)
                    v = _element(context, builder, corner, kinds[1], at, types.intp)
                    w = _element(context, builder, weights, kinds[2], at, kinds[0].dtype)
                    row = builder.gep(rows.data, [builder.add(builder.mul(v, stride), start)])
                    term = builder.fmul(vec.broadcast(w), vec.load(row, mask))
                    builder.store(builder.fadd(builder.load(total), term), total)
            vec.store(builder.load(total), builder.gep(target.data, [start]), mask)
        return context.get_dummy_value()

    return types.void(values, vertex, weight, i, out), codegen


def _element(context, builder, array, kind, flat, to):
    """Element ``flat`` of a C-contiguous array (of numba type ``kind``), cast to ``to``."""
    value = builder.load(builder.gep(array.data, [flat]))
    return context.cast(builder, value, kind.dtype, to)


@intrinsic
def splat_rows(typingctx, rows, own, base, vertex, weight, x, scale):  # pragma: no cover
    """One point's splat: ``rows[row(vertex[r])] += weight[r] (scale x)`` for every corner r in
    order, where ``row(v)`` is v for the vertices ``v >= own`` and ``base + v`` below (a chunk's
    own vertices, and its copies of those it shares with earlier chunks: ``lattice_numba``'s
    ``_chunk_spans``); for (M, C) ``rows``, integers ``own`` and ``base``, ``vertex`` and
    ``weight`` (d+1,), the point's values ``x`` (C,) and a ``scale`` of the rows' dtype
    (``_typed``)."""
    if not (
        _typed(rows, vertex, weight, x, rows)
        and all(isinstance(i, types.Integer) for i in (own, base))
        and scale == rows.dtype
    ):
        return None

    def codegen(context, builder, signature, args):
        arrays, vec, width, corners = _corners(
            context, builder, signature, args, rows_at=0, vertex_at=3
        )
        own, base = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2))
        factor = vec.broadcast(args[6])
        for start, mask in vec.columns(width):
            value = builder.fmul(factor, vec.load(builder.gep(arrays[5].data, [start]), mask))
            with cgutils.for_range(builder, corners, intp=width.type) as loop:
                v, w = _corner(context, builder, signature, arrays, loop, vertex_at=3, weight_at=4)
                shared = builder.icmp_signed("<", v, own)
                row = builder.select(shared, builder.add(base, v), v)
                at = builder.gep(arrays[0].data, [builder.add(builder.mul(row, width), start)])
                term = builder.fmul(vec.broadcast(w), value)
                vec.store(builder.fadd(vec.load(at, mask), term), at, mask)
        return context.get_dummy_value()

    return types.void(rows, own, base, vertex, weight, x, scale), codegen


@intrinsic
def blur_row(typingctx, src, dst, v, a, b, half):  # pragma: no cover
    """One vertex of a blur pass: ``dst[v] = src[v] + half (src[a] + src[b])`` for C-contiguous
    (M, C) ``src`` and writable ``dst`` (as wide: not checked), ``half`` and both of one float
    dtype, ``a`` and ``b`` the neighbours of ``v``."""
    arrays = (src, dst)
    if not (
        all(isinstance(x, types.Array) and x.layout == "C" and x.ndim == 2 for x in arrays)
        and isinstance(src.dtype, types.Float)
        and dst.dtype == src.dtype == half
        and dst.mutable
        and all(isinstance(i, types.Integer) for i in (v, a, b))
    ):
        return None

    def codegen(context, builder, signature, args):
        source, target = (
            context.make_array(t)(context, builder, x)
            for t, x in zip(signature.args[:2], args[:2], strict=True)
        )
        vec = _Vectors(builder, signature.args[0].dtype)
        width = builder.extract_value(source.shape, 1)
        v, a, b = (
            builder.mul(context.cast(builder, x, t, types.intp), width)
            for x, t in zip(args[2:5], signature.args[2:5], strict=True)
        )
        scale = vec.broadcast(
            context.cast(builder, args[5], signature.args[5], signature.args[0].dtype)
        )
        for start, mask in vec.columns(width):
            row_a, row_b, row_v = (
                vec.load(builder.gep(source.data, [builder.add(r, start)]), mask) for r in (a, b, v)
            )
            pair = builder.fmul(scale, builder.fadd(row_a, row_b))
            at = builder.gep(target.data, [builder.add(v, start)])
            vec.store(builder.fadd(row_v, pair), at, mask)
        return context.get_dummy_value()

    return types.void(src, dst, v, a, b, half), codegen


# 2^f on [-1/2, 1/2], relative error 1e-7 in float32 (least squares on Chebyshev nodes).
_EXP2 = (6.9314718e-01, 2.4022646e-01, 5.5503290e-02, 9.6185198e-03, 1.3399860e-03, 1.5337577e-04)


def _exp(builder: ir.IRBuilder, vec: _Vectors, x: ir.Value) -> ir.Value:
    """exp of every lane: float32 by a polynomial (exp(x) = 2^e 2^f, e = round(x log2(e)),
    |f| <= 1/2, 2^e through the exponent bits; below -80, 2^-115, clamped: 1e-35 of a
    softmax's largest term), float64 by libm's exp (LLVM's ``llvm.exp``, as numba's
    ``math.exp``). libm's float32 exp measured 3x slower per pass."""
    module = builder.module
    kind = vec.type
    if isinstance(kind.element, ir.DoubleType):
        name = f"llvm.exp.v{vec.lanes}f64"
        fn = cgutils.get_or_insert_function(module, ir.FunctionType(kind, [kind]), name)
        return builder.call(fn, [x])

    def const(value: float) -> ir.Value:
        return ir.Constant(kind, [ir.Constant(kind.element, value)] * vec.lanes)

    floor = cgutils.get_or_insert_function(
        module, ir.FunctionType(kind, [kind]), f"llvm.floor.v{vec.lanes}f32"
    )
    low = const(-80.0)
    u = builder.fmul(
        builder.select(builder.fcmp_ordered("<", x, low), low, x), const(1.4426950408889634)
    )
    e = builder.call(floor, [builder.fadd(u, const(0.5))])
    f = builder.fsub(u, e)
    p = const(_EXP2[5])
    for c in (*_EXP2[4::-1], 1.0):
        p = builder.fadd(builder.fmul(p, f), const(c))
    ints = ir.VectorType(ir.IntType(32), vec.lanes)
    bits = builder.shl(
        builder.add(builder.fptosi(e, ints), ir.Constant(ints, [127] * vec.lanes)),
        ir.Constant(ints, [23] * vec.lanes),
    )
    return builder.fmul(p, builder.bitcast(bits, kind))


def _largest(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The largest lane of ``v``, by halving: ``llvm.vector.reduce.fmax`` compiled to a chain
    of scalar NaN checks, and its no-NaN form would make a NaN score undefined (a NaN lane
    still makes the softmax's sum, and so its row, NaN)."""
    lanes = v.type.count
    half = lanes // 2
    while half:
        shifted = builder.shuffle_vector(
            v,
            ir.Constant(v.type, ir.Undefined),
            ir.Constant(ir.VectorType(_I32, lanes), [(i + half) % lanes for i in range(lanes)]),
        )
        v = builder.select(builder.fcmp_ordered(">", v, shifted), v, shifted)
        half //= 2
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic
def softmax_row(typingctx, x):  # pragma: no cover
    """``x = exp(x - max x) / sum exp(x - max x)`` in place for a C-contiguous (K,) float row:
    the maximum, the exponentials (``_exp``), their sum and the products by its inverse, one
    vector per 16 float32s (8 float64s). A row that fits one vector stays in a register and
    sums as a tree; longer rows sum vector after vector. Over scalar loops, each point's max
    and sum a chain of K dependent operations (the softmax was a quarter of the point pass,
    perf), a dense_crf call took 0.95-0.99x (interleaved, 6 pairs); the tree's rounding
    differs from the loops' in the last bit (marginals by < 1e-6)."""
    if not (
        isinstance(x, types.Array)
        and x.ndim == 1
        and x.layout == "C"
        and isinstance(x.dtype, types.Float)
        and x.mutable
    ):
        return None

    def codegen(context, builder, signature, args):
        row = context.make_array(signature.args[0])(context, builder, args[0])
        vec = _Vectors(builder, signature.args[0].dtype)
        kind = vec.type
        width = builder.extract_value(row.shape, 0)
        module = builder.module
        suffix = f"v{vec.lanes}f{kind.element.intrinsic_name[1:]}"
        add = cgutils.get_or_insert_function(
            module,
            ir.FunctionType(kind.element, [kind.element, kind]),
            f"llvm.vector.reduce.fadd.{suffix}",
        )
        lowest = ir.Constant(kind, [ir.Constant(kind.element, float("-inf"))] * vec.lanes)
        negzero = ir.Constant(kind.element, -0.0)
        one = ir.Constant(kind.element, 1.0)

        def exps(value, mask, biggest):
            values = _exp(builder, vec, builder.fsub(value, vec.broadcast(biggest)))
            return builder.select(mask, values, vec.zero)  # lanes past the row add nothing

        short = builder.icmp_signed("<=", width, ir.Constant(width.type, vec.lanes))
        with builder.if_else(short) as (one_vector, blocks):
            with one_vector:
                lane = ir.Constant(ir.VectorType(width.type, vec.lanes), list(range(vec.lanes)))
                mask = builder.icmp_signed("<", lane, vec.broadcast(width, lane.type))
                value = vec.load(row.data, mask)
                biggest = _largest(builder, builder.select(mask, value, lowest))
                e = exps(value, mask, biggest)
                total = builder.call(add, [negzero, e], fastmath=("reassoc",))
                vec.store(builder.fmul(e, vec.broadcast(builder.fdiv(one, total))), row.data, mask)
            with blocks:
                biggest = cgutils.alloca_once_value(
                    builder, ir.Constant(kind.element, float("-inf"))
                )
                for start, mask in vec.columns(width):
                    value = vec.load(builder.gep(row.data, [start]), mask)
                    block = _largest(builder, builder.select(mask, value, lowest))
                    larger = builder.fcmp_ordered(">", block, builder.load(biggest))
                    builder.store(builder.select(larger, block, builder.load(biggest)), biggest)
                total = cgutils.alloca_once_value(builder, negzero)
                for start, mask in vec.columns(width):
                    at = builder.gep(row.data, [start])
                    e = exps(vec.load(at, mask), mask, builder.load(biggest))
                    vec.store(e, at, mask)
                    builder.store(builder.call(add, [builder.load(total), e]), total)
                inverse = vec.broadcast(builder.fdiv(one, builder.load(total)))
                for start, mask in vec.columns(width):
                    at = builder.gep(row.data, [start])
                    vec.store(builder.fmul(vec.load(at, mask), inverse), at, mask)
        return context.get_dummy_value()

    return types.void(x), codegen
