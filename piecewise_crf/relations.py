"""Spatial relations: which pairs of grid nodes (p, q) a Pairwise-Net connects.

A relation is a set of grid offsets (dy, dx); node p at (y, x) is joined to q = (y + dy, x + dx)
whenever q lies inside the grid. Edges are ordered: the Pairwise-Net sees [f_p, f_q] in that order,
so "above_below" means "p above q". Offsets may depend on the grid size (the paper's boxes are a
fraction of the shorter grid side), so a relation maps a grid size to its offsets.

Adding a relation is a few lines: subclass `Relation`, implement `offsets` (and `resized` if
they depend on the range box) and decorate it with `@register_relation("name")` so configs can
name it; or list fixed offsets under `model.custom_relations` (`FixedOffsets`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from piecewise_crf.registry import Registry

Offset = tuple[int, int]


def box_side(grid_h: int, grid_w: int, fraction: float = 0.4) -> int:
    """Side of the paper's range box: `fraction` of the shorter grid side, rounded to an odd number >= 3."""
    side = max(3, round(fraction * min(grid_h, grid_w)))
    return side if side % 2 == 1 else side + 1


class Relation:
    """A named set of grid offsets from p to q."""

    name: str

    def offsets(self, grid_h: int, grid_w: int) -> list[Offset]:
        raise NotImplementedError

    def resized(self, fraction: float) -> Relation:
        """This relation with a range box of `fraction` (itself when its offsets have no box)."""
        return self


# name -> class; `model.relations: [..., name]` builds `cls(fraction=model.box_fraction)`.
RELATIONS: Registry[type[Relation]] = Registry("relation")
register_relation = RELATIONS.register  # class decorator: @register_relation("name")
HOW_TO_ADD = (
    "to add a relation, register its class with @register_relation or list its offsets under "
    "model.custom_relations"
)


@dataclass(frozen=True)
class BoxRelation(Relation):
    """A relation whose offsets lie in the paper's range box: its side is `fraction` of the
    shorter grid side (`box_side`), so the offsets grow with the grid."""

    name: str = ""
    fraction: float = 0.4

    def resized(self, fraction: float) -> Relation:
        return replace(self, fraction=fraction)


@register_relation("surrounding")
@dataclass(frozen=True)
class Surrounding(BoxRelation):
    """Every node in a square box centred on p, each unordered pair once (dy > 0, or dy = 0 and dx > 0)."""

    name: str = "surrounding"

    def offsets(self, grid_h: int, grid_w: int) -> list[Offset]:
        r = box_side(grid_h, grid_w, self.fraction) // 2
        return [(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]


@register_relation("above_below")
@dataclass(frozen=True)
class AboveBelow(BoxRelation):
    """q below p: dy in [1, side], |dx| <= side // 2, with `side` the range-box side."""

    name: str = "above_below"

    def offsets(self, grid_h: int, grid_w: int) -> list[Offset]:
        side = box_side(grid_h, grid_w, self.fraction)
        r = side // 2
        return [(dy, dx) for dy in range(1, side + 1) for dx in range(-r, r + 1)]


@dataclass(frozen=True)
class FixedOffsets(Relation):
    """A user-defined relation with the same offsets at every grid size."""

    name: str
    fixed: tuple[Offset, ...]

    def __init__(self, name: str, offsets: list[Offset] | tuple[Offset, ...]) -> None:
        fixed = tuple((int(dy), int(dx)) for dy, dx in offsets)
        if not fixed or (0, 0) in fixed:
            raise ValueError(f"relation {name!r}: give at least one offset and never (0, 0)")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fixed", fixed)

    def offsets(self, grid_h: int, grid_w: int) -> list[Offset]:
        return list(self.fixed)


def build_relations(
    names: list[str] | tuple[str, ...],
    *,
    fraction: float = 0.4,
    custom: dict[str, list[Offset]] | None = None,
) -> list[Relation]:
    """Relations by name: a registered one (`RELATIONS`: "surrounding", "above_below", yours), or
    a key of `custom` (name -> fixed offsets)."""
    custom = custom or {}
    relations: list[Relation] = []
    for name in names:
        if name in custom:
            relations.append(FixedOffsets(name, custom[name]))
            continue
        try:
            cls = RELATIONS[name]
        except ValueError as err:  # the registry's "unknown relation 'x'; did you mean ...?"
            there = f", which has {', '.join(sorted(custom))}" if custom else ""
            raise ValueError(f"{err} ({HOW_TO_ADD}{there})") from None
        relation = cls(fraction=fraction)
        if relation.name != name:  # the model keys its Pairwise-Nets by relation.name
            raise ValueError(f"relation registered as {name!r} is named {relation.name!r}")
        relations.append(relation)
    return relations


def offset_slices(grid_h: int, grid_w: int, dy: int, dx: int) -> tuple[tuple[slice, slice], ...]:
    """Slices (rows, cols) of the grid covering every p with q = p + (dy, dx) inside, and the matching q."""
    p_rows = slice(max(0, -dy), grid_h - max(0, dy))
    p_cols = slice(max(0, -dx), grid_w - max(0, dx))
    q_rows = slice(p_rows.start + dy, p_rows.stop + dy)
    q_cols = slice(p_cols.start + dx, p_cols.stop + dx)
    return (p_rows, p_cols), (q_rows, q_cols)


def offset_span(grid_h: int, grid_w: int, dy: int, dx: int) -> tuple[int, int, int]:
    """The p region of `offset_slices` as one run of row-major node indices: (first, shift,
    length). The run `first .. first + length` starts at the region's first node and ends at
    its last; q = p + shift (shift = dy * grid_w + dx). Between two region rows it passes
    |dx| nodes outside the region (their q wraps to another row): edges that do not exist."""
    (pr, pc), _ = offset_slices(grid_h, grid_w, dy, dx)
    rows, width = pr.stop - pr.start, pc.stop - pc.start
    if rows <= 0 or width <= 0:
        return pr.start * grid_w + pc.start, dy * grid_w + dx, 0
    return pr.start * grid_w + pc.start, dy * grid_w + dx, (rows - 1) * grid_w + width


def offset_edges(grid_h: int, grid_w: int, offsets: list[Offset]) -> torch.Tensor:
    """Edge list (E, 2) of flat node indices (p, q) = (y * grid_w + x), offset-major then row-major.

    The order matches the compact per-offset score tensors used by the grid fast path.
    """
    index = torch.arange(grid_h * grid_w).view(grid_h, grid_w)
    rows = []
    for dy, dx in offsets:
        (pr, pc), (qr, qc) = offset_slices(grid_h, grid_w, dy, dx)
        rows.append(torch.stack([index[pr, pc].reshape(-1), index[qr, qc].reshape(-1)], dim=1))
    if not rows:
        return torch.zeros(0, 2, dtype=torch.int64)
    return torch.cat(rows)
