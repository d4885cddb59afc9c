import pytest
import torch

from piecewise_crf.relations import (
    AboveBelow,
    FixedOffsets,
    Surrounding,
    box_side,
    build_relations,
    offset_edges,
)


@pytest.mark.parametrize(
    ("h", "w", "side"), [(3, 3, 3), (10, 12, 5), (20, 30, 9), (27, 36, 11), (15, 20, 7)]
)
def test_box_side_is_odd_fraction_of_shorter_side(h, w, side):
    assert box_side(h, w) == side


def test_surrounding_counts_each_unordered_pair_once():
    offsets = Surrounding().offsets(10, 12)  # side 5: 24 neighbours, half of them
    assert len(offsets) == 12
    assert len(set(offsets)) == 12
    assert all((-dy, -dx) not in offsets for dy, dx in offsets)
    assert all(max(abs(dy), abs(dx)) <= 2 for dy, dx in offsets)


def test_above_below_points_down():
    offsets = AboveBelow().offsets(10, 12)
    assert len(offsets) == 25
    assert {dy for dy, _ in offsets} == {1, 2, 3, 4, 5}
    assert {dx for _, dx in offsets} == {-2, -1, 0, 1, 2}


def test_offset_edges_directions_and_borders():
    # 2 x 3 grid, node index y * 3 + x
    edges = offset_edges(2, 3, [(1, -1), (0, 1)])
    assert edges.tolist() == [[1, 3], [2, 4], [0, 1], [1, 2], [3, 4], [4, 5]]
    assert offset_edges(2, 3, [(2, 0)]).shape == (0, 2)


def test_edge_count_matches_grid_arithmetic():
    h, w = 7, 9
    offsets = Surrounding().offsets(h, w)
    edges = offset_edges(h, w, offsets)
    assert len(edges) == sum((h - abs(dy)) * (w - abs(dx)) for dy, dx in offsets)
    assert len(torch.unique(edges, dim=0)) == len(edges)


def test_custom_relation_and_errors():
    rel = build_relations(["left_right"], custom={"left_right": [(0, 1), (0, 2)]})[0]
    assert rel.name == "left_right" and rel.offsets(5, 5) == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match="unknown relation 'diagonal'"):
        build_relations(["diagonal"])
    with pytest.raises(ValueError, match=r"never \(0, 0\)"):
        FixedOffsets("bad", [(0, 0)])


def test_resized_relations_change_only_the_box():
    surrounding, above = Surrounding(fraction=0.4), AboveBelow(fraction=0.4)
    assert surrounding.resized(0.1).offsets(34, 45) == Surrounding(fraction=0.1).offsets(34, 45)
    assert above.resized(0.1).offsets(34, 45) == AboveBelow(fraction=0.1).offsets(34, 45)
    assert len(Surrounding(fraction=0.1).offsets(34, 45)) == 4  # side 3: (0,1) and (1,-1..1)
    assert len(AboveBelow(fraction=0.1).offsets(34, 45)) == 9  # dy 1..3, dx -1..1
    fixed = FixedOffsets("left_right", [(0, 1), (0, 2)])
    assert fixed.resized(0.1) is fixed


def test_registered_relations_are_built_by_name(registries):
    from dataclasses import dataclass

    from piecewise_crf.relations import Relation, build_relations, register_relation

    @register_relation("test_right")
    @dataclass(frozen=True)
    class Right(Relation):
        name: str = "test_right"
        fraction: float = 0.4

        def offsets(self, grid_h, grid_w):
            return [(0, 1)]

    @register_relation("test_misnamed")
    @dataclass(frozen=True)
    class Misnamed(Right):
        name: str = "something_else"

    (relation,) = build_relations(["test_right"], fraction=0.2)
    assert relation == Right(fraction=0.2) and relation.offsets(5, 5) == [(0, 1)]
    with pytest.raises(ValueError, match="registered as 'test_misnamed' is named"):
        build_relations(["test_misnamed"])
    with pytest.raises(ValueError, match="valid: surrounding, above_below, test_right, test_mis"):
        build_relations(["nope"])
    with pytest.raises(ValueError, match="already registered"):
        register_relation("test_right")(Misnamed)


def test_unknown_relation_says_how_to_add_one():
    from piecewise_crf.relations import build_relations

    with pytest.raises(ValueError) as err:
        build_relations(["above"])
    assert str(err.value) == (
        "unknown relation 'above'; did you mean 'above_below'? (to add a relation, register its "
        "class with @register_relation or list its offsets under model.custom_relations)"
    )
    with pytest.raises(ValueError, match="valid: surrounding, above_below .*custom_relations, "
                       "which has left_right, up\\)$"):  # fmt: skip
        build_relations(["diagonal"], custom={"up": [(-1, 0)], "left_right": [(0, 1)]})
