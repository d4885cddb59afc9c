"""`piecewise-crf evaluate`: the metrics of every stage, written as JSON and a confusion PNG, and
one-line errors for bad data, checkpoints and output paths."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from cli_checks import fails
from PIL import Image

from piecewise_crf.checkpoint import update_checkpoint
from piecewise_crf.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def evaluate(checkpoint, *flags: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--quiet", *flags]


def test_writes_json_and_confusion_png_and_prints_the_table(checkpoint, tmp_path, capsys):
    out, png = tmp_path / "m.json", tmp_path / "confusion.png"
    assert main(evaluate(checkpoint, "--split", "val", "--json", str(out))) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # only what was named
    assert main(evaluate(checkpoint, "--split", "val", "--confusion", str(png))) == 0
    saved = json.loads(out.read_text())
    assert list(saved) == ["unary", "crf", "crf+dense"]
    for stage in saved.values():
        assert {"pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"} <= set(
            stage
        )
        assert len(stage["per_class_iou"]) == 5 and stage["classes"][0] == "background"
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "synthetic val: 32 of 32 images" in printed
    assert (
        "object_a" in printed and "mean IoU" in printed and f"metrics written to {out}" in printed
    )


def test_limit_no_dense_box_and_a_sweep(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.json"
    flags = ["--split", "val", "--limit", "3", "--no-dense", "--box-fraction", "0.2"]
    flags += ["--pairwise-scales", "0.5", "--sweep-modes", "interaction", "--json", str(out)]
    assert main(evaluate(checkpoint, *flags)) == 0
    printed = capsys.readouterr().out
    assert "3 of 32 images" in printed and "box 0.2" in printed and "crf+dense skipped" in printed
    assert list(json.loads(out.read_text())) == ["unary", "crf", "crf[interaction,0.5]"]


def test_a_camvid_run_on_its_own_files(camvid_run, camvid_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = evaluate(camvid_run / "final.pt", "--data-root", str(camvid_data), "--split", "val")
    assert main([*argv, "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())) == ["unary", "crf", "crf+dense"]
    assert "Pedestrian" in capsys.readouterr().out
    # the checkpoint's dataset is the default; another class set is refused
    fails(evaluate(camvid_run / "final.pt", "--dataset", "synthetic", "--split", "val"), capsys,
          "predicts 11 classes")  # fmt: skip
    assert main(evaluate(camvid_run / "final.pt", "--split", "val")) == 0  # the run keeps its root
    moved = tmp_path / "moved.pt"
    update_checkpoint(camvid_run / "final.pt", lambda c: dataclasses.replace(
        c, config=dataclasses.replace(c.config, data=dataclasses.replace(
            c.config.data, root=str(tmp_path / "gone")))), out=moved)  # fmt: skip
    fails(evaluate(moved, "--split", "val"), capsys,
          f"CamVid root not found: {tmp_path / 'gone'}; pass --data-root with its folder")  # fmt: skip


def test_bad_camvid_data_gives_one_line_errors(camvid_run, camvid_data, tmp_path, capsys):
    import shutil

    root = tmp_path / "camvid"
    shutil.copytree(camvid_data, root)
    argv = evaluate(camvid_run / "final.pt", "--data-root", str(root), "--split", "val")
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
    fails([*argv[:-4], "--data-root", str(tmp_path / "nowhere"), "--split", "val"], capsys,
          "not found")  # fmt: skip


def test_bad_checkpoints_and_output_paths_are_refused(checkpoint, camvid_data, tmp_path, capsys):
    argv = ["evaluate", "--split", "val", "--quiet", "--checkpoint"]
    fails([*argv, str(tmp_path / "x.pt")], capsys, "checkpoint not found")
    fails([*argv, str(tmp_path)], capsys, "RUN_DIR/final.pt")
    (tmp_path / "bad.pt").write_bytes(b"\0" * 100)
    fails([*argv, str(tmp_path / "bad.pt")], capsys, "cannot read checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    fails([*argv, str(truncated)], capsys, "truncated, corrupt", tmp_path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "config": {}}, foreign)  # a pickled module
    err = fails([*argv, str(foreign)], capsys, "refusing to read checkpoint", tmp_path)
    assert "weights_only" not in err
    listing = camvid_data / "val.txt"  # an existing file that is not a results file
    fails([*argv, str(checkpoint), "--json", str(listing)], capsys, "--json", camvid_data)
    fails([*argv, str(checkpoint), "--confusion", str(listing)], capsys, "not a .png", camvid_data)
    for output in ("--json", "--confusion"):  # an output path that is the input checkpoint
        fails([*argv, str(checkpoint), output, str(checkpoint)], capsys,
              f"{output} {checkpoint} is an input of this command", checkpoint.parent)  # fmt: skip


def test_outputs_never_replace_the_data_or_each_other(camvid_run, camvid_data, tmp_path, capsys):
    argv = evaluate(camvid_run / "final.pt", "--data-root", str(camvid_data), "--split", "val")
    argv.append("--overwrite")  # even so: the data are never replaced
    label = camvid_data / "valannot" / "0001TP_val000.png"
    fails([*argv, "--confusion", str(label)], capsys, "is an input of this command", camvid_data)
    link = tmp_path / "link.png"
    link.symlink_to(label)
    fails([*argv, "--confusion", str(link)], capsys, "is an input of this command", camvid_data)
    same = tmp_path / "m.json"
    fails([*argv, "--json", str(same), "--confusion", str(same)], capsys,
          "--json and --confusion both name")  # fmt: skip
    assert not same.exists()


def test_an_existing_result_is_replaced_only_with_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.json"
    out.write_text('{"earlier": "results"}')
    argv = evaluate(checkpoint, "--split", "val", "--limit", "1", "--no-dense", "--json", str(out))
    fails(argv, capsys, "exists; pass --overwrite to replace it", tmp_path)
    assert main([*argv, "--overwrite"]) == 0 and "unary" in json.loads(out.read_text())
