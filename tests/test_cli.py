"""The command line as a user runs it, including the mistakes users make."""

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_camvid
from PIL import Image
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

import piecewise_crf.data.synthetic as synthetic
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = ["model.block6_channels=16", "model.hidden=16", "dense_crf.iterations=2"]
CAMVID = [
    "data.dataset=camvid", "model.num_classes=11", "data.crop_size=[32,48]",
    "train.batch_size=2", "train.epochs=1", "data.num_workers=0", *TINY,
]  # fmt: skip


def fails(argv, capsys, match):
    """The command exits 2 with one `error:` line matching `match` and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory):
    """An 11-class model trained through the CLI on a tiny CamVid-format folder."""
    root = make_camvid(tmp_path_factory.mktemp("camvid"), n_train=4, n_val=2)
    run = root.parent / "run"
    argv = ["train", "--config", str(CONFIGS / "demo.yaml"), "--data-root", str(root)]
    assert main([*argv, "--out", str(run), "--quiet", "--set", *CAMVID]) == 0
    return root, run


def test_train_evaluate_predict_on_camvid_files(camvid_run, tmp_path, capsys):
    root, run = camvid_run
    assert load_checkpoint(run / "final.pt")["classes"][0] == "Sky"
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--checkpoint", str(run / "final.pt"), "--dataset", "camvid"]
    argv += ["--root", str(root), "--split", "val", "--json", str(out), "--quiet"]
    assert main(argv) == 0
    assert list(json.loads(out.read_text())) == ["unary", "crf", "crf+dense"]
    assert "Pedestrian" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(run / "final.pt"), str(root / "val"), "--out",
                 str(tmp_path / "pred"), "--quiet"]) == 0  # fmt: skip
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 2


def test_resume_continues_from_the_run_folder(camvid_run, capsys):
    root, run = camvid_run
    argv = ["train", "--out", str(run), "--data-root", str(root), "--quiet"]
    fails(argv, capsys, "--config")
    assert main([*argv, "--resume", "--set", "train.epochs=2"]) == 0
    assert load_checkpoint(run / "final.pt")["epoch"] == 2
    fails([*argv, "--config", str(CONFIGS / "demo.yaml")], capsys, "--resume to continue")


def test_bad_camvid_data_gives_one_line_errors(camvid_run, tmp_path, capsys):
    root, run = camvid_run
    argv = ["evaluate", "--checkpoint", str(run / "final.pt"), "--dataset", "camvid", "--quiet"]
    argv += ["--root", str(root), "--split", "val"]
    label = root / "valannot" / "0001TP_val000.png"
    image = root / "val" / "0001TP_val001.png"
    good_label, good_image = label.read_bytes(), image.read_bytes()

    Image.fromarray(np.full((36, 48), 40, np.uint8)).save(label)
    fails(argv, capsys, "values [40]")
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(label)
    fails(argv, capsys, "size mismatch")
    label.write_bytes(good_label)
    image.write_bytes(b"garbage")
    fails(argv, capsys, "cannot read image")
    image.unlink()
    fails(argv, capsys, "missing")
    image.write_bytes(good_image)
    (root / "empty.txt").write_text("")
    fails([*argv[:-1], "empty"], capsys, "empty")
    fails([*argv[:-4], "--root", str(tmp_path / "nowhere"), "--split", "val"], capsys, "not found")


def test_config_and_checkpoint_mistakes(camvid_run, tmp_path, capsys):
    root, run = camvid_run
    train = ["train", "--config", str(CONFIGS / "demo.yaml"), "--out", str(tmp_path / "r")]
    fails([*train, "--set", "train.lrr=0.1"], capsys, "did you mean 'lr'")
    fails([*train[:2], str(tmp_path / "nope.yaml"), *train[3:]], capsys, "does not exist")
    fails([*train, "--set", "data.dataset=camvid"], capsys, "--data-root")
    evaluate = ["evaluate", "--dataset", "synthetic", "--split", "val", "--quiet"]
    fails([*evaluate, "--checkpoint", str(tmp_path / "x.pt")], capsys, "checkpoint not found")
    (tmp_path / "bad.pt").write_bytes(b"\0" * 100)
    fails([*evaluate, "--checkpoint", str(tmp_path / "bad.pt")], capsys, "cannot read checkpoint")
    fails([*evaluate, "--checkpoint", str(run / "final.pt")], capsys, "predicts 11 classes")


def test_calibrate_through_the_cli(camvid_run, tmp_path, capsys):
    root, run = camvid_run
    final = run / "final.pt"
    before = final.read_bytes()
    argv = ["calibrate", "--checkpoint", str(final), "--root", str(root), "--limit", "2"]
    out = tmp_path / "calibrated.pt"
    assert main([*argv, "--steps", "2", "--out", str(out)]) == 0
    assert final.read_bytes() == before and "ring_weights" in capsys.readouterr().out
    assert load_checkpoint(out)["calibration"]["split"] == "train"
    fails([*argv, "--out", str(out)], capsys, "exists")
    fails([*argv, "--out", str(root / "train.txt")], capsys, "train.txt")
    fails([*argv, "--split", "nope"], capsys, "nope.txt")
    assert final.read_bytes() == before


def test_demo_writes_a_report_that_opens_from_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(synthetic.SPLITS, "train", (0, 16))
    monkeypatch.setitem(synthetic.SPLITS, "val", (1, 3))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU on val: unary" in out and "report:" in out
    report = tmp_path / "demo" / "report" / "index.html"
    page = report.read_text()
    for stage in ("unary", "CRF (mean-field)", "CRF + dense CRF"):
        assert stage in page
    sources = [s.split("'")[0] for s in page.split("src='")[1:]]
    assert len(sources) >= 2 + 3 * 5  # curves, confusion, 3 examples x 5 columns
    for src in sources:
        assert not Path(src).is_absolute() and (report.parent / src).is_file(), src


def test_import_names_the_missing_module(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fails(["--import", "no_such_extension", "demo", "--out", "x"], capsys, "no module")
    (tmp_path / "broken_extension.py").write_text("import no_such_dependency\n")
    fails(["--import", "broken_extension", "demo"], capsys, "no_such_dependency")
    assert not (tmp_path / "x").exists()
