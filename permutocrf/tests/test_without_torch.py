"""permutocrf without torch: importing it loads no torch, numpy inputs need none, and what does
need torch says so in one line that names the install. Each check runs in a fresh interpreter
where ``import torch`` fails (as where torch is not installed), so it holds in any environment;
CI also runs the whole test directory in a virtual environment without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from frames import noisy_regions

import permutocrf

NO_TORCH = "import sys; sys.modules['torch'] = None  # import torch now fails\n"


def run(code: str, *args: str) -> str:
    """stdout of ``code`` in a fresh interpreter without torch; fails the test on an error."""
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + code, *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_loads_no_torch_even_where_it_is_installed():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, permutocrf; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


DROP_IN = """
import json, sys
import numpy as np
import permutocrf as dcrf
from permutocrf.utils import unary_from_softmax
image, probs = np.load(sys.argv[1]), np.load(sys.argv[2])
k, h, w = probs.shape
crf = dcrf.DenseCRF2D(w, h, k)
crf.setUnaryEnergy(unary_from_softmax(probs))
crf.addPairwiseGaussian(sxy=3, compat=3)
crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=10)
q, tmp1, tmp2 = crf.startInference()
for _ in range(3):
    crf.stepInference(q, tmp1, tmp2)
np.save(sys.argv[3], np.array(crf.inference(5)))
np.save(sys.argv[4], dcrf.dense_crf(image, probs, bi_xy_std=20.0))
print(json.dumps({"kl": crf.klDivergence(q), "torch": "torch" in sys.modules and bool(sys.modules["torch"])}))
"""


def test_drop_in_and_dense_crf_without_torch_give_the_same_results(tmp_path):
    """A pydensecrf client script and ``dense_crf`` without torch, against this process
    (where torch may be loaded, which must change nothing)."""
    image, probs = noisy_regions(h=30, w=40, k=4)
    paths = [str(tmp_path / f"{name}.npy") for name in ("image", "probs", "q", "dense")]
    np.save(paths[0], image)
    np.save(paths[1], probs)
    out = json.loads(run(DROP_IN, *paths))
    assert out["torch"] is False
    crf = permutocrf.DenseCRF2D(40, 30, 4)
    crf.setUnaryEnergy(permutocrf.unary_from_softmax(probs))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=10)
    np.testing.assert_array_equal(np.load(paths[2]), crf.inference(5))
    np.testing.assert_array_equal(
        np.load(paths[3]), permutocrf.dense_crf(image, probs, bi_xy_std=20.0)
    )
    q, tmp1, tmp2 = crf.startInference()
    for _ in range(3):
        crf.stepInference(q, tmp1, tmp2)
    assert out["kl"] == crf.klDivergence(q)


ASKS_FOR_TORCH = """
import numpy as np
import permutocrf
calls = {
    "device": lambda: permutocrf.DenseCRF2D(4, 3, 2, device="cuda"),
    "backend": lambda: permutocrf.DenseCRF(12, 2, backend="torch"),
    "dense_crf": lambda: permutocrf.dense_crf(
        np.zeros((3, 4, 3), np.uint8), np.full((2, 3, 4), 0.5, np.float32), backend="torch"
    ),
    "kernel": lambda: permutocrf.gaussian_kernel(3, 4, device="cuda"),
    "layer": lambda: permutocrf.DenseCRFLayer,
}
for name, call in calls.items():
    try:
        call()
    except ImportError as err:
        print(name, "|", err)
"""


def test_what_needs_torch_says_so_in_one_line_naming_the_install():
    lines = run(ASKS_FOR_TORCH).splitlines()
    assert [line.split(" |")[0] for line in lines] == [
        "device",
        "backend",
        "dense_crf",
        "kernel",
        "layer",
    ]
    for line in lines:
        assert "needs PyTorch, which is not installed: pip install torch" in line


def test_numpy_float_stds_give_the_python_float_result():
    """A std read from a numpy array (np.float64) must not turn float32 features into float64
    ones: the same marginals and kernel as with Python floats."""
    image, probs = noisy_regions(h=30, w=40, k=3)
    stds = dict(pos_xy_std=3.0, bi_xy_std=20.0, bi_rgb_std=13.0)
    as_numpy = {k: np.float64(v) for k, v in stds.items()}
    expected = permutocrf.dense_crf(image, probs, **stds)
    got = permutocrf.dense_crf(image, probs, **as_numpy)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    kernel = permutocrf.bilateral_kernel(image, np.float64(20.0), np.float64(13.0))
    assert kernel.weight.dtype == np.float32
    np.testing.assert_array_equal(
        kernel.weight, permutocrf.bilateral_kernel(image, 20.0, 13.0).weight
    )
