"""ConfusionMatrix against hand-computed values and a brute-force loop."""

import math

import numpy as np
import pytest
import torch

from piecewise_crf.metrics import ConfusionMatrix


def brute_force(pred, target, k, ignore=255):
    n = np.zeros((k, k), np.int64)
    for p, t in zip(pred.ravel(), target.ravel(), strict=True):
        if t != ignore:
            n[t, p] += 1
    return n


def test_hand_computed():
    # true:  0 0 0 1 1 2 | 255 ignored; pred: 0 0 1 1 2 2 | anything
    target = np.array([0, 0, 0, 1, 1, 2, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 7])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = cm.compute()
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    iou = [2 / 3, 1 / 3, 1 / 2]  # n_ii / (t_i + p_i - n_ii): 2/(3+2-2), 1/(2+2-1), 1/(1+2-1)
    assert m["per_class_iou"] == pytest.approx(iou)
    assert m["mean_iou"] == pytest.approx(sum(iou) / 3)
    assert m["frequency_weighted_iou"] == pytest.approx((3 * iou[0] + 2 * iou[1] + 1 * iou[2]) / 6)
    assert m["per_class_accuracy"] == pytest.approx([2 / 3, 1 / 2, 1.0])


def test_random_against_brute_force_numpy_and_torch():
    rng = np.random.default_rng(0)
    k = 5
    target = rng.integers(0, k, (4, 13, 17))
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, k, target.shape)
    expected = brute_force(pred, target, k)
    cm_np, cm_t = ConfusionMatrix(k), ConfusionMatrix(k)
    cm_np.update(pred.astype(np.uint8), target.astype(np.uint8))
    cm_t.update(torch.from_numpy(pred), torch.from_numpy(target).int())
    np.testing.assert_array_equal(cm_np.matrix, expected)
    np.testing.assert_array_equal(cm_t.matrix, expected)
    n = expected.astype(float)
    t, p, d = n.sum(1), n.sum(0), np.diag(n)
    iou = d / (t + p - d)
    m = cm_t.compute()
    assert m["mean_iou"] == pytest.approx(iou.mean())
    assert m["pixel_accuracy"] == pytest.approx(d.sum() / n.sum())
    assert m["frequency_weighted_iou"] == pytest.approx((t * iou).sum() / t.sum())


def test_absent_class_is_nan_and_skipped():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 2]))  # class 3 absent everywhere
    m = cm.compute()
    assert math.isnan(m["per_class_iou"][3]) and math.isnan(m["per_class_accuracy"][3])
    assert m["per_class_iou"][2] == 0.0  # in the target, never predicted
    assert m["mean_iou"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["mean_accuracy"] == pytest.approx((1 + 1 + 0) / 3)


def test_class_subset_restricts_means_only():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    full, sub = cm.compute(), cm.compute(classes=[0, 2])
    assert sub["mean_iou"] == pytest.approx((1 + 1 / 2) / 2)
    assert sub["frequency_weighted_iou"] == pytest.approx((1 * 1 + 1 * 0.5) / 2)
    assert sub["pixel_accuracy"] == full["pixel_accuracy"]
    assert sub["per_class_iou"] == full["per_class_iou"]
    with pytest.raises(ValueError, match="classes must be in 0..2"):
        cm.compute(classes=[3])


def test_empty_matrix_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        m = ConfusionMatrix(2).compute()
    assert all(math.isnan(m[key]) for key in ("pixel_accuracy", "mean_iou", "mean_accuracy"))


def test_merge_reset_and_all_reduce_without_distributed():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(np.array([0, 1]), np.array([0, 2]))
    b.update(np.array([2]), np.array([2]))
    a.merge(b).all_reduce()  # no process group: all_reduce leaves the counts alone
    assert a.matrix.sum() == 3 and a.matrix[2, 2] == 1
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(4))
    a.reset()
    assert a.matrix.sum() == 0


def test_all_reduce_sums_across_processes(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(2)
        cm.update(np.array([1, 1]), np.array([1, 0]))
        assert cm.all_reduce().matrix.tolist() == [[0, 1], [0, 1]]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("pred", "target", "error", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), ValueError, "shapes differ"),
        (np.zeros(3, np.float32), np.zeros(3, int), TypeError, "integer class ids"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), TypeError, "argmax"),
        (np.zeros(3, int), np.array([0, 5, 1]), ValueError, r"target holds values \[5\]"),
        (np.zeros(3, int), np.array([0, -1, 1]), ValueError, r"target holds values \[-1\]"),
        (np.array([0, 3, 1]), np.zeros(3, int), ValueError, r"pred holds values \[3\]"),
        ([0, 1], [0, 1], TypeError, "numpy array or a torch tensor"),
    ],
)
def test_bad_input(pred, target, error, match):
    with pytest.raises(error, match=match):
        ConfusionMatrix(3).update(pred, target)
