"""The dataset registry: every reader, the synthetic one included, is looked up by name and
called as reader(root, split, *, transforms=None, **kwargs)."""

import pytest
import torch
from dataset_files import make_camvid

from piecewise_crf.data import DATASETS, CamVid, SyntheticContext, build_dataset, register_dataset
from piecewise_crf.data.synthetic import read_synthetic

FILE_READERS = [name for name in DATASETS if name != "synthetic"]


def test_builtin_names_in_order():
    assert list(DATASETS) == ["camvid", "voc", "context", "nyud", "siftflow", "folder", "synthetic"]
    assert DATASETS["synthetic"] is read_synthetic and DATASETS["camvid"] is CamVid


def test_synthetic_goes_through_the_registry_and_ignores_root(tmp_path):
    flip = lambda x, y: (x.flip(-1), y.flip(-1))  # noqa: E731
    for root in (None, tmp_path / "not_there"):
        val = build_dataset("Synthetic", root, "val", transforms=flip)
        assert isinstance(val, SyntheticContext) and len(val) == 32 and val.seed == 1
        plain = SyntheticContext.split("val")
        x, y = val[3]
        assert torch.equal(x, plain[3][0].flip(-1)) and torch.equal(y, plain[3][1].flip(-1))
    with pytest.raises(ValueError, match="synthetic splits are train, val, test, got 'all'"):
        build_dataset("synthetic", None, "all")


@pytest.mark.parametrize("name", FILE_READERS)
def test_missing_root_says_to_set_data_root(name):
    kwargs = {"num_classes": 3} if name == "folder" else {}
    with pytest.raises(ValueError, match="needs its folder: pass root or set data.root") as err:
        build_dataset(name, None, "train", **kwargs)
    assert "--" not in str(err.value)  # library messages name config keys, not CLI flags
    assert "\n" not in str(err.value)


def test_missing_root_names_the_reader():
    with pytest.raises(ValueError, match="^CamVid needs its folder: pass root or set data.root"):
        CamVid(None)


def test_register_dataset_adds_a_reader(registries, tmp_path):
    root = make_camvid(tmp_path)

    @register_dataset("my_camvid")
    def my_camvid(root, split, *, transforms=None, **kwargs):
        return CamVid(root, "val" if split == "all" else split, transforms=transforms, **kwargs)

    assert len(build_dataset("MY_CAMVID", root, "all")) == 2
    assert register_dataset("my_camvid")(my_camvid) is my_camvid  # the same reader again is fine
    with pytest.raises(ValueError, match="a dataset named 'my_camvid' is already registered"):
        register_dataset("my_camvid")(CamVid)
    with pytest.raises(
        ValueError, match=r"^unknown dataset 'my_camvd'; did you mean 'my_camvid'\?"
    ):
        build_dataset("my_camvd", root, "val")
