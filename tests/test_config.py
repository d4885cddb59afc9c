import pytest

from piecewise_crf.config import (
    Config,
    config_from_dict,
    config_to_dict,
    cpu_config,
    load_config,
    paper_config,
    save_config,
)


def test_presets_hold_the_papers_settings():
    paper = paper_config()
    assert paper.model.backbone == "vgg16"
    assert paper.model.scales == (1.2, 0.8, 0.4)
    assert paper.model.pool_windows == (5, 9)
    assert paper.model.relations == ("surrounding", "above_below")
    assert paper.model.hidden == 512 and paper.model.block6_channels == 512
    assert paper.crf.iterations == 3
    assert cpu_config().model.block6_channels < 512


def test_unknown_key_names_the_closest_one():
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr'; did you mean 'lr'"):
        config_from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="did you mean 'model'"):
        config_from_dict({"modle": {}})
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_dict({"preset": "gpu"})


def test_yaml_preset_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: cpu\nmodel:\n  scales: [1, 0.5]\n  num_classes: 11\ntrain:\n  lr: 1\n")
    config = load_config(path, ["train.epochs=7", "model.relations=[surrounding]"])
    assert config.model.scales == (1.0, 0.5)
    assert config.model.num_classes == 11
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.epochs == 7
    assert config.model.relations == ("surrounding",)
    assert config.model.hidden == cpu_config().model.hidden


def test_type_errors_are_reported():
    with pytest.raises(ValueError, match="train.epochs: expected int"):
        config_from_dict({"train": {"epochs": "many"}})
    with pytest.raises(ValueError, match="override 'lr' must look like"):
        load_config(None, ["lr"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_round_trip(tmp_path):
    config = paper_config()
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config_from_dict(config_to_dict(Config())) == Config()
