"""`piecewise-crf train` on a user's bad day: refusals before anything is touched, resume,
signals and kill -9. Each failure asserts exit status 2, one `error:` line naming the fix, and
that every file present before is unchanged."""

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import TINY, fails, snapshot, train_argv
from dataset_files import make_camvid

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.commands.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture()
def run(camvid_run, tmp_path) -> Path:
    """A copy of the shared CamVid-format run, to resume or damage."""
    shutil.copytree(camvid_run, tmp_path / "run")
    return tmp_path / "run"


def test_a_trained_run_holds_the_classes_of_its_data(camvid_run):
    ckpt = load_checkpoint(camvid_run / "final.pt")
    assert ckpt.classes[0] == "Sky" and ckpt.config.data.dataset == "camvid"


def test_overwrite_checks_the_data_before_deleting_the_old_run(run, tmp_path, capsys):
    fails([*train_argv(tmp_path / "typo", run), "--overwrite"], capsys, "not found", run)
    argv = [*train_argv(run.parent, run, "train.val_every=0"), "--overwrite"]
    fails(argv, capsys, "train.val_every must be >= 1", run)


def test_a_new_run_never_replaces_files_in_its_folder(camvid_data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\nbase: demo\n")
    fails(
        train_argv(camvid_data, out), capsys, "training would replace it: pass it as --config", out
    )
    (out / "config.yaml").unlink()
    (out / "final.pt").write_bytes(b"a finished model")
    fails(train_argv(camvid_data, out), capsys, "pass --resume to continue it or --overwrite", out)
    fails([*train_argv(camvid_data, out), "--resume"], capsys, "no last.pt to continue from", out)
    fails(train_argv(camvid_data, out / "final.pt"), capsys, "--out", out)


def test_config_mistakes_fail_before_any_folder_is_made(camvid_data, tmp_path, capsys):
    out = tmp_path / "new"
    fails(train_argv(camvid_data, out, "crf.pairwise_mode=interation"), capsys, "'interaction'?")
    fails(train_argv(camvid_data, out, "train.epochs=-3"), capsys, "train.epochs must be >= 1")
    fails(train_argv(camvid_data, out, "train.device=gpu"), capsys, "train.device")
    fails(train_argv(camvid_data, out, "train.lr=[1"), capsys, "cannot parse")
    fails(train_argv(camvid_data, out, "train.lrr=0.1"), capsys, "did you mean 'lr'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n epochs: 3\n")
    fails(["train", "--config", str(bad), "--out", str(out)], capsys, "line", tmp_path)
    fails(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(out)], capsys, "neither")
    fails(["train", "--config", "demo", "--out", str(out), "--set", "data.dataset=camvid"],
          capsys, "pass --data-root or set data.root")  # fmt: skip
    fails(["train", "--out", str(out)], capsys, "train needs --config")
    fails(["train", "--dataset", "folder", "--out", str(out), "--set", "train.lrr=1"], capsys,
          "did you mean 'lr'")  # fmt: skip
    assert not out.exists()


def test_resume_applies_a_changed_learning_rate_and_cleans_temp_files(camvid_data, run, capsys):
    for name in ("last.pt", "best.pt"):  # what a kill -9 during a checkpoint write leaves
        (run / f".{name}.12345.deadbeef.tmp").write_bytes(b"partial")
    argv = ["train", "--out", str(run), "--data-root", str(camvid_data), "--quiet", "--resume"]
    assert main([*argv, "--set", "train.epochs=2", "train.lr=1e-3", "train.momentum=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "removed 2 temp files" in printed and "train.lr: 0.001 vs 0.1" in printed
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["base_lr"] for g in groups] == pytest.approx([1e-3, 1e-3])  # demo: lr mult 1
    assert [g["momentum"] for g in groups] == [0.5, 0.5]
    assert not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "final.pt").run.epoch == 2
    fails([*argv[:-1], "--config", "demo"], capsys, "--resume to continue")


def test_resume_without_config_uses_the_checkpoints_settings(camvid_data, run, capsys):
    (run / "config.yaml").write_text("model:\n  num_cl")  # truncated by a crash or an editor
    argv = ["train", "--out", str(run), "--data-root", str(camvid_data), "--quiet", "--resume"]
    assert main([*argv, "--set", "train.epochs=3"]) == 0
    assert "config.yaml" in capsys.readouterr().out  # says it was not used
    ckpt = load_checkpoint(run / "final.pt")
    assert ckpt.run.epoch == 3 and ckpt.config.model.num_classes == 11
    assert "num_classes: 11" in (run / "config.yaml").read_text()  # rewritten whole


def test_worker_errors_and_weights_files_are_one_line(camvid_data, tmp_path, capsys):
    broken = tmp_path / "camvid"
    make_camvid(broken, n_train=4, n_val=2)
    (broken / "train" / "0001TP_train002.png").write_bytes(b"not a png")
    argv = train_argv(broken, tmp_path / "r", "data.num_workers=1")
    fails(argv, capsys, "cannot read image", broken)
    weights = tmp_path / "mobilenet.pth"
    weights.write_bytes(b"PK\x03\x04 truncated zip")
    argv = train_argv(camvid_data, tmp_path / "r2", "model.backbone=mobilenet_v2")
    fails([*argv, f"model.backbone_weights={weights}"], capsys, "truncated, corrupt", tmp_path)


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(
    camvid_data, run, capsys, monkeypatch
):
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    argv = ["train", "--out", str(run), "--data-root", str(camvid_data), "--quiet", "--resume"]
    keep = {run / "final.pt", run / "last.pt", run / "best.pt"}
    before = {p: h for p, h in snapshot(run).items() if p in keep}
    err = fails([*argv, "--set", "train.epochs=2"], capsys, "no space left on the device")
    assert "the previous last.pt is intact" in err or "the previous best.pt is intact" in err
    assert {p: h for p, h in snapshot(run).items() if p in keep} == before
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert calls


def test_repeated_set_options_all_count(camvid_data, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(camvid_data, out)
    split = argv.index("--set") + 3
    assert main([*argv[:split], "--set", *argv[split:], "--set", "train.lr=5e-4"]) == 0
    config = load_checkpoint(out / "final.pt").config
    assert config.data.dataset == "camvid" and config.train.lr == 5e-4


def _train_process(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = train_argv(data, out, "train.val_every=2", *extra)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import sys; from piecewise_crf.commands.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_is_reported_like_ctrl_c(camvid_data, tmp_path):
    out = tmp_path / "run"
    process = _train_process(camvid_data, out, "train.epochs=1000")
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.startswith("terminated (SIGTERM)") and "--resume" in err
    assert load_checkpoint(out / "last.pt").run.epoch >= 1


def test_killed_at_random_moments_then_resumed_equals_an_uninterrupted_run(camvid_data, tmp_path):
    """kill -9 at random moments (seeded: after a random epoch's checkpoint, a random part of an
    epoch later, so some land inside a checkpoint write), --resume until done: the same weights,
    bit for bit, and no temp file left behind."""
    straight, epochs = tmp_path / "straight", "train.epochs=12"
    tic, first = time.monotonic(), None
    process = _train_process(camvid_data, straight, epochs)
    while process.poll() is None:  # when the first checkpoint appears, and the whole run
        if first is None and (straight / "last.pt").exists():
            first = time.monotonic() - tic
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()
    epoch_seconds = (time.monotonic() - tic - first) / 11
    out, rng, epochs_at_kill = tmp_path / "killed", random.Random(0), []
    last = out / "last.pt"
    for target in sorted(rng.sample(range(1, 12), 4)):
        process = _train_process(camvid_data, out, epochs, *(["--resume"] if last.exists() else []))
        while process.poll() is None and not (
            last.exists() and load_checkpoint(last).run.epoch >= target
        ):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, epoch_seconds))
        process.kill()
        process.wait()
        epochs_at_kill.append(load_checkpoint(last).run.epoch)
    assert _train_process(camvid_data, out, epochs, "--resume").wait(timeout=300) == 0
    assert any(0 < e < 12 for e in epochs_at_kill), epochs_at_kill  # resumed mid-run
    expected = load_checkpoint(straight / "final.pt")
    got = load_checkpoint(out / "final.pt")
    assert got.run.epoch == expected.run.epoch == 12 and got.run.step == expected.run.step
    for key, value in expected.model.items():
        assert torch.equal(got.model[key], value), key
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_bad_sample_stops_the_run_before_anything_is_written(camvid_data, run, tmp_path, capsys):
    from PIL import Image

    broken = tmp_path / "camvid"
    make_camvid(broken, n_train=4, n_val=2)
    label = broken / "trainannot" / "0001TP_train003.png"
    Image.fromarray(np.full((36, 48), 40, np.uint8)).save(label)  # not a class, not void
    fresh = tmp_path / "fresh"
    fails(train_argv(broken, fresh), capsys, "values [40]")
    assert not fresh.exists() or list(fresh.iterdir()) == []  # no config.yaml left behind
    fails([*train_argv(broken, run), "--overwrite"], capsys, "values [40]", run)
    assert main(train_argv(camvid_data, fresh)) == 0  # the corrected rerun is not refused


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(
    camvid_data, run, capsys
):
    before = snapshot(run)
    argv = [*train_argv(camvid_data, run, "train.lr=1e30"), "--overwrite"]  # diverges at once
    fails(argv, capsys, "training diverged")
    assert snapshot(run) == before and not (run / ".replaced-run").exists()
    assert main([*train_argv(camvid_data, run), "--overwrite"]) == 0  # a good one replaces it
    assert not (run / ".replaced-run").exists()


def test_the_config_file_in_the_run_folder_is_never_replaced(camvid_data, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    mine = project / "config.yaml"
    mine.write_text("# my notes on this run\nbase: demo\ntrain: {epochs: 1}\n")
    before = mine.read_bytes()
    argv = ["train", "--config", str(mine), "--data-root", str(camvid_data), "--out", str(project)]
    assert main([*argv, "--quiet", "--set", *TINY]) == 0
    assert mine.read_bytes() == before and (project / "final.pt").exists()
    assert main([*argv, "--quiet", "--set", *TINY, "train.epochs=2", "--resume"]) == 0
    assert mine.read_bytes() == before
    assert main([*argv, "--quiet", "--set", *TINY, "--overwrite"]) == 0
    assert mine.read_bytes() == before


def test_resuming_a_finished_run_writes_nothing(camvid_data, run, capsys):
    import dataclasses

    from piecewise_crf.checkpoint import update_checkpoint

    update_checkpoint(run / "final.pt", lambda c: dataclasses.replace(c, calibration={"x": 1}))
    before = snapshot(run)
    argv = ["train", "--out", str(run), "--data-root", str(camvid_data), "--quiet", "--resume"]
    assert main(argv) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert snapshot(run) == before  # final.pt and its calibration as they were


def test_sigterm_to_the_process_group_with_dataloader_workers(camvid_data, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(
        camvid_data, out, "train.val_every=2", "train.epochs=1000", "data.num_workers=2"
    )
    code = "import sys; from piecewise_crf.commands.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)  # what Slurm and systemd do: every process in it
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.startswith("terminated (SIGTERM)") and err.count("\n") == 1, err
    assert load_checkpoint(out / "last.pt").run.epoch >= 1
