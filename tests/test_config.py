import dataclasses
import math
import re

import pytest
import torch

from piecewise_crf.config import (
    Config,
    config_from_dict,
    config_to_dict,
    config_yaml,
    load_config,
    parse_override,
    read_config_values,
    shipped_configs,
)
from piecewise_crf.devices import resolve_device
from piecewise_crf.settings import DenseCRFConfig


def test_shipped_configs_hold_the_papers_settings():
    paper = load_config("paper")
    assert paper.model.backbone == "vgg16"
    assert paper.model.scales == (1.2, 0.8, 0.4)
    assert paper.model.pool_windows == (5, 9)
    assert paper.model.relations == ("surrounding", "above_below")
    assert paper.model.hidden == 512 and paper.model.block6_channels == 512
    assert paper.crf.iterations == 3
    assert load_config("cpu").model.block6_channels < 512
    assert load_config("paper.yaml") == paper  # with or without the suffix


def test_unknown_key_names_the_closest_one():
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr'; did you mean 'lr'"):
        config_from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="did you mean 'model'"):
        config_from_dict({"modle": {}})
    with pytest.raises(FileNotFoundError, match="nor a shipped config .*; did you mean 'cpu'"):
        load_config("gpu")


def test_base_chains_merge_from_the_base_up(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: cpu\nmodel: {num_classes: 3}\ntrain: {lr: 0.5}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.yaml").write_text("base: ../mine.yaml\ntrain: {epochs: 2}\n")
    config = load_config(tmp_path / "sub" / "more.yaml")
    cpu = load_config("cpu")
    assert (config.model.num_classes, config.train.lr, config.train.epochs) == (3, 0.5, 2)
    assert config.model.scales == cpu.model.scales  # from cpu, two bases down
    # the key's old name, `preset:`, still names a shipped config
    (tmp_path / "old.yaml").write_text("preset: cpu\n")
    assert load_config(tmp_path / "old.yaml") == cpu
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"base: chain loops \(.*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: [cpu]\n")
    with pytest.raises(ValueError, match="base: must name a config file"):
        load_config(tmp_path / "c.yaml")


def test_a_shipped_base_is_the_shipped_one(tmp_path, monkeypatch):
    """camvid_trainval.yaml's `base: camvid.yaml` is the shipped camvid.yaml, even where the
    current folder holds a file of that name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "camvid.yaml").write_text("model: {num_classes: 2}\n")
    assert load_config("camvid_trainval").model.num_classes == 11
    assert load_config("camvid.yaml").model.num_classes == 2  # a path on the command line wins


def test_yaml_base_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: cpu\nmodel:\n  scales: [1, 0.5]\n  num_classes: 11\ntrain:\n  lr: 1\n")
    config = load_config(path, ["train.epochs=7", "model.relations=[surrounding]"])
    assert config.model.scales == (1.0, 0.5)
    assert config.model.num_classes == 11
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.epochs == 7
    assert config.model.relations == ("surrounding",)
    assert config.model.hidden == load_config("cpu").model.hidden


def test_type_errors_are_reported():
    with pytest.raises(ValueError, match="train.epochs: expected int"):
        config_from_dict({"train": {"epochs": "many"}})
    with pytest.raises(ValueError, match="override 'lr' must look like"):
        load_config(None, ["lr"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        load_config("/nonexistent/config.yaml")


def test_round_trip(tmp_path):
    config = load_config("paper")
    (tmp_path / "c.yaml").write_text(config_yaml(config))
    assert load_config(tmp_path / "c.yaml") == config
    assert config_from_dict(config_to_dict(Config())) == Config()


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_validates_and_round_trips(name):
    config = load_config(name)
    config.validate()
    assert config_from_dict(config_to_dict(config)) == config


def test_the_trainval_recipe_is_the_camvid_recipe_plus_its_changes():
    assert read_config_values("camvid_trainval") == {
        **read_config_values("camvid"),
        "data": {
            **read_config_values("camvid")["data"],
            "train_split": "trainval",
            "val_split": "",
        },
    }
    assert set(shipped_configs()) >= {"demo", "cpu", "paper", "camvid", "camvid_trainval"}


def test_yaml_reads_yaml_1_2_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n  minutes: 1.5e+2\n")
    config = load_config(path, ["train.backbone_lr_mult=.5", "crf.pairwise_scale=1e0"])
    assert (config.train.lr, config.train.weight_decay, config.train.minutes) == (1e-3, 5e-4, 150.0)
    assert (config.train.backbone_lr_mult, config.crf.pairwise_scale) == (0.5, 1.0)
    assert parse_override("a.b=[-1e3, .inf, 3, 'x', true, 1.2.3]") == {
        "a": {"b": [-1000.0, math.inf, 3, "x", True, "1.2.3"]}
    }
    assert math.isnan(parse_override("a.b=.nan")["a"]["b"])
    assert isinstance(parse_override("a.b=3")["a"]["b"], int)


def test_a_string_for_a_float_field_is_read_as_a_number():
    assert config_from_dict({"train": {"lr": "0.01"}}).train.lr == 0.01
    with pytest.raises(ValueError, match=r"^train\.lr: expected a number, got 'fast'$"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ValueError, match=r"^train\.lr: expected a number, got True$"):
        config_from_dict({"train": {"lr": True}})


@pytest.mark.parametrize("value", [True, 2.5, 3.0])
def test_int_fields_take_only_ints(value):
    with pytest.raises(ValueError, match=rf"^train\.epochs: expected int, got {value}$"):
        config_from_dict({"train": {"epochs": value}})


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "num_classes", 0, "model.num_classes must be >= 1, got 0"),
        ("model", "backbone", "vgg", "model.backbone must be one of vgg16, mobilenet_v2, tiny, "
         "got 'vgg'; did you mean 'vgg16'?"),
        ("model", "scales", [], "model.scales must be a non-empty list, got ()"),
        ("model", "scales", [1, 0], "model.scales[1] must be a finite number > 0, got 0.0"),
        ("model", "scales", [math.inf], "model.scales[0] must be a finite number > 0, got inf"),
        ("model", "block6_channels", 0, "model.block6_channels must be >= 1, got 0"),
        ("model", "hidden", -1, "model.hidden must be >= 1, got -1"),
        ("model", "pool_windows", [5, 4], "model.pool_windows[1] must be an odd int >= 1, got 4"),
        ("model", "pool_windows", [-1], "model.pool_windows[0] must be an odd int >= 1, got -1"),
        ("model", "pool_order", "pool", "model.pool_order must be one of pool_then_concat, "
         "concat_then_pool, got 'pool'"),
        ("model", "relations", ["surround"], "model.relations[0] must be one of surrounding, "
         "above_below, got 'surround'; did you mean 'surrounding'?"),
        ("model", "box_fraction", 0, "model.box_fraction must be in (0, 1], got 0.0"),
        ("model", "box_fraction", 1.5, "model.box_fraction must be in (0, 1], got 1.5"),
        ("model", "node_labels", "mode", "model.node_labels must be one of nearest, majority, "
         "got 'mode'"),
        ("model", "ignore_index", 256, "model.ignore_index must be an int in 0..255, got 256"),
        ("crf", "iterations", -1, "crf.iterations must be >= 0, got -1"),
        ("crf", "pairwise_mode", "interation", "crf.pairwise_mode must be one of raw, "
         "interaction, got 'interation'; did you mean 'interaction'?"),
        ("crf", "pairwise_scale", -0.5, "crf.pairwise_scale must be a finite number >= 0, got -0.5"),
        ("crf", "box_fraction", 0, "crf.box_fraction must be in (0, 1], got 0.0"),
        ("crf", "tolerance", -1e-3, "crf.tolerance must be a finite number >= 0 and <= 1, "
         "got -0.001"),
        ("crf", "tolerance", math.nan, "crf.tolerance must be a finite number >= 0 and <= 1, "
         "got nan"),
        ("crf", "ring_weights", {"surround": [1]}, "crf.ring_weights must be keyed by the "
         "model's relations (surrounding, above_below), got 'surround'; did you mean 'surrounding'?"),
        ("crf", "ring_weights", {"surrounding": []}, "crf.ring_weights.surrounding must be a "
         "non-empty list of finite numbers >= 0, got []"),
        ("crf", "ring_weights", {"surrounding": [0.1, -1]}, "crf.ring_weights.surrounding must "
         "be a non-empty list of finite numbers >= 0, got [0.1, -1]"),
        ("dense_crf", "iterations", -2, "dense_crf.iterations must be >= 0, got -2"),
        ("dense_crf", "pos_xy_std", 0, "dense_crf.pos_xy_std must be a finite number > 0, got 0.0"),
        ("dense_crf", "bi_xy_std", math.nan, "dense_crf.bi_xy_std must be a finite number > 0, "
         "got nan"),
        ("dense_crf", "bi_rgb_std", -3, "dense_crf.bi_rgb_std must be a finite number > 0, "
         "got -3.0"),
        ("dense_crf", "pos_weight", -1, "dense_crf.pos_weight must be a finite number >= 0, "
         "got -1.0"),
        ("dense_crf", "bi_weight", math.inf, "dense_crf.bi_weight must be a finite number >= 0, "
         "got inf"),
        ("data", "dataset", "camvd", "data.dataset must be one of camvid, voc, context, nyud, "
         "siftflow, folder, synthetic, got 'camvd'; did you mean 'camvid'?"),
        ("data", "train_split", "", "data.train_split must be a split name, got ''"),
        ("data", "crop_size", [16, 64], "data.crop_size must be two ints >= 32, [height, width], "
         "got (16, 64)"),
        ("data", "scale_range", [1.2, 0.7], "data.scale_range must be two finite numbers [low, "
         "high] with 0 < low <= high, got (1.2, 0.7)"),
        ("data", "scale_range", [0, 1], "data.scale_range must be two finite numbers [low, high] "
         "with 0 < low <= high, got (0.0, 1.0)"),
        ("data", "num_workers", -1, "data.num_workers must be >= 0, got -1"),
        ("data", "colour_jitter", [0.4, 0.4, 0.4, 0.6], "data.colour_jitter must be [brightness, "
         "contrast, saturation, hue] with the first three in 0..1, hue in 0..0.5, got (0.4, 0.4, "
         "0.4, 0.6)"),
        ("data", "colour_jitter", [0.4], "data.colour_jitter: expected 4 values, got [0.4]"),
        ("train", "epochs", -3, "train.epochs must be >= 1, got -3"),
        ("train", "batch_size", 0, "train.batch_size must be >= 1, got 0"),
        ("train", "lr", 0, "train.lr must be a finite number > 0, got 0.0"),
        ("train", "lr", math.nan, "train.lr must be a finite number > 0, got nan"),
        ("train", "backbone_lr_mult", -1, "train.backbone_lr_mult must be a finite number >= 0, "
         "got -1.0"),
        ("train", "freeze_layers", -1, "train.freeze_layers must be >= 0, got -1"),
        ("train", "momentum", 1, "train.momentum must be in [0, 1), got 1.0"),
        ("train", "weight_decay", math.inf, "train.weight_decay must be a finite number >= 0, "
         "got inf"),
        ("train", "lr_power", -1, "train.lr_power must be a finite number >= 0, got -1.0"),
        ("train", "pairwise_weight", -1, "train.pairwise_weight must be a finite number >= 0, "
         "got -1.0"),
        ("train", "class_balance", -1, "train.class_balance must be a finite number >= 0, "
         "got -1.0"),
        ("train", "edge_fraction", 0, "train.edge_fraction must be in (0, 1], got 0.0"),
        ("train", "max_edges", 0, "train.max_edges must be >= 1, got 0"),
        ("train", "minutes", -1, "train.minutes must be a finite number >= 0, got -1.0"),
        ("train", "val_every", 0, "train.val_every must be >= 1, got 0"),
        ("train", "seed", -1, "train.seed must be an int in 0..4294967295, got -1"),
        ("train", "device", "gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("train", "device", "cuda:x", "train.device must be auto, cpu, cuda or cuda:N, "
         "got 'cuda:x'"),
    ],
)  # fmt: skip
def test_validate_names_the_key_and_the_fix(section, key, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        config_from_dict({section: {key: value}})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_that_validate(device):
    assert config_from_dict({"train": {"device": device}}).train.device == device


@pytest.mark.parametrize("split", ["", None])
def test_an_empty_val_split_means_no_validation(split):
    assert config_from_dict({"data": {"val_split": split}}).data.val_split == split


def test_custom_relations_are_checked_element_by_element():
    config = config_from_dict(
        {"model": {"custom_relations": {"diag": [[1, 1], [-1, 2]]}, "relations": ["diag"]}}
    )
    assert config.model.relations == ("diag",)
    cases = [
        ([[1, 1]], "model.custom_relations must be a mapping name -> [[dy, dx], ...], got [[1, 1]]"),
        ({"d": []}, "model.custom_relations.d must be a non-empty list of [dy, dx] pairs, got []"),
        ({"d": [[0, 0]]}, "model.custom_relations.d must be non-zero [dy, dx] offsets, got [0, 0]"),
        ({"d": [[1, 1.5]]}, "model.custom_relations.d must be a list of [dy, dx] int pairs, "
         "got [1, 1.5]"),
        ({"d": [[1, True]]}, "model.custom_relations.d must be a list of [dy, dx] int pairs, "
         "got [1, True]"),
    ]  # fmt: skip
    for value, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            config_from_dict({"model": {"custom_relations": value}})
    deep: list = [1]
    for _ in range(50):
        deep = [deep]
    with pytest.raises(
        ValueError, match=r"^model\.custom_relations\.d must be a list of \[dy, dx\]"
    ):
        config_from_dict({"model": {"custom_relations": {"d": deep}}})
    with pytest.raises(ValueError, match=r"^model\.relations\[0\] must be one of surrounding, "):
        config_from_dict({"model": {"relations": ["diag"]}})


def test_validate_checks_a_config_built_in_python():
    config = load_config("paper")
    config.train.amp = 1
    with pytest.raises(ValueError, match=r"^train\.amp must be true or false, got 1$"):
        config.validate()
    config = load_config("paper")
    config.train.epochs = 2.5
    with pytest.raises(ValueError, match=r"^train\.epochs must be an int, got 2\.5$"):
        config.validate()


def test_malformed_yaml_is_one_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  num_classes: 3\ntrain: {lr: [\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} line 4: cannot parse YAML \("):
        load_config(path)
    path.write_text("- model\n- train\n")
    with pytest.raises(ValueError, match=r"a config file must be a mapping of sections"):
        load_config(path)
    message = "override 'train.lr=[': cannot parse the value (expected the node content"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_config(None, ["train.lr=["])
    for text in ["=3", "train.=3", ".lr=3"]:
        with pytest.raises(
            ValueError, match=f"^override '{re.escape(text)}': the key has an empty"
        ):
            parse_override(text)


def test_resolve_device_rejects_a_bad_name():
    message = "device 'gpu' is not a device name; use auto, cpu, cuda or cuda:N"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_device("gpu")
    assert resolve_device("cpu").type == "cpu"


def test_resolve_device_rejects_a_gpu_that_is_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    message = "device 'cuda:2' asked for, but 2 GPU(s) are visible (cuda:0..cuda:1); use one"
    with pytest.raises(ValueError, match=f"^{re.escape(message)} of them or auto$"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="^device 'cuda' asked for, but 2 GPU"):
        resolve_device("cuda", local_rank=2)


def test_dense_crf_defaults_are_permutocrfs():
    """DenseCRFConfig writes permutocrf's kernel defaults out (settings must not import numba);
    they must not drift apart."""
    from permutocrf.dense import PARAMS

    defaults = {f.name: f.default for f in dataclasses.fields(DenseCRFConfig)}
    assert {k: defaults[k] for k in PARAMS} == PARAMS
