"""Nothing lost, nothing cryptic: the commands on a user's bad day.

Each case asserts the exit status, a one-line `error:` message that names the fix, and that every
file present before is unchanged (by sha256).
"""

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_data import make_camvid
from tiny_run import one_thread  # noqa: F401  (autouse fixture)

from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.cli import build_parser, main
from piecewise_crf.demo import MARKER, check_demo_folder

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = [
    "data.dataset=camvid", "model.num_classes=11", "data.crop_size=[32,48]",
    "train.batch_size=2", "train.epochs=1", "data.num_workers=0", "model.block6_channels=16",
    "model.hidden=16", "dense_crf.iterations=2",
]  # fmt: skip


def snapshot(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under `folders`."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fails(argv, capsys, match, *keep: Path) -> str:
    """The command exits 2 with one `error:` line holding `match`; files under `keep` unchanged."""
    before = snapshot(*keep)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert snapshot(*keep) == before
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("camvid"), n_train=4, n_val=2)


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--config", str(CONFIGS / "demo.yaml"), "--data-root", str(data)]
    return [*argv, "--out", str(out), "--quiet", "--set", *TINY, *extra]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(train_argv(data, out)) == 0
    return out


def test_overwrite_checks_the_data_before_deleting_the_old_run(run, tmp_path, capsys):
    fails([*train_argv(tmp_path / "typo", run), "--overwrite"], capsys, "not found", run)
    argv = [*train_argv(run.parent, run, "train.val_every=0"), "--overwrite"]
    fails(argv, capsys, "train.val_every must be >= 1", run)


def test_a_new_run_never_replaces_files_in_its_folder(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\npreset: demo\n")
    fails(train_argv(data, out), capsys, "--overwrite to replace it", out)
    (out / "config.yaml").unlink()
    (out / "final.pt").write_bytes(b"a finished model")
    fails(train_argv(data, out), capsys, "--overwrite", out)
    fails([*train_argv(data, out), "--resume"], capsys, "no last.pt to continue from", out)


def test_config_mistakes_fail_before_any_folder_is_made(data, tmp_path, capsys):
    out = tmp_path / "new"
    fails(train_argv(data, out, "crf.pairwise_mode=interation"), capsys, "'interaction'?")
    fails(train_argv(data, out, "train.epochs=-3"), capsys, "train.epochs must be >= 1")
    fails(train_argv(data, out, "train.device=gpu"), capsys, "train.device")
    fails(train_argv(data, out, "train.lr=[1"), capsys, "cannot parse")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n epochs: 3\n")
    fails(["train", "--config", str(bad), "--out", str(out)], capsys, "line", tmp_path)
    assert not out.exists()


def test_resume_applies_a_changed_learning_rate_and_cleans_temp_files(data, run, capsys):
    for name in ("last.pt", "best.pt"):  # what a kill -9 during a checkpoint write leaves
        (run / f".{name}.12345.deadbeef.tmp").write_bytes(b"partial")
    argv = ["train", "--out", str(run), "--data-root", str(data), "--quiet", "--resume"]
    assert main([*argv, "--set", "train.epochs=2", "train.lr=1e-3", "train.momentum=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "removed 2 temp files" in printed and "train.lr: 0.001 vs 0.1" in printed
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["base_lr"] for g in groups] == pytest.approx([1e-3, 1e-3])  # demo: lr mult 1
    assert [g["momentum"] for g in groups] == [0.5, 0.5]
    assert not list(run.glob(".*.tmp"))


def test_resume_without_config_uses_the_checkpoints_settings(data, run, capsys):
    (run / "config.yaml").write_text("model:\n  num_cl")  # truncated by a crash or an editor
    argv = ["train", "--out", str(run), "--data-root", str(data), "--quiet", "--resume"]
    assert main([*argv, "--set", "train.epochs=3"]) == 0
    assert "config.yaml" in capsys.readouterr().out  # says it was not used
    ckpt = load_checkpoint(run / "final.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["model"]["num_classes"] == 11
    assert "num_classes: 11" in (run / "config.yaml").read_text()  # rewritten whole


def test_worker_errors_weights_and_checkpoints_are_one_line(data, run, tmp_path, capsys):
    broken = tmp_path / "camvid"
    make_camvid(broken, n_train=4, n_val=2)
    (broken / "train" / "0001TP_train002.png").write_bytes(b"not a png")
    argv = train_argv(broken, tmp_path / "r", "data.num_workers=1")
    fails(argv, capsys, "cannot read image", broken)

    weights = tmp_path / "mobilenet.pth"
    weights.write_bytes(b"PK\x03\x04 truncated zip")
    argv = train_argv(data, tmp_path / "r2", "model.backbone=mobilenet_v2")
    fails([*argv, f"model.backbone_weights={weights}"], capsys, "truncated, corrupt", tmp_path)

    evaluate = ["evaluate", "--split", "val", "--root", str(data), "--quiet", "--checkpoint"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "final.pt").read_bytes()[:5000])
    fails([*evaluate, str(truncated)], capsys, "truncated, corrupt", tmp_path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "config": {}}, foreign)  # a pickled module
    err = fails([*evaluate, str(foreign)], capsys, "refusing to read checkpoint", tmp_path)
    assert "weights_only" not in err
    listing = data / "val.txt"  # an existing file that is not a results file
    fails([*evaluate, str(run / "final.pt"), "--json", str(listing)], capsys, "not a .json", data)
    fails(
        [*evaluate, str(run / "final.pt"), "--confusion", str(listing)], capsys, "not a .png", data
    )
    for output in ("--json", "--confusion"):  # an output path that is the input checkpoint
        fails([*evaluate, str(run / "final.pt"), output, str(run / "final.pt")], capsys,
              "is an input of this command", run)  # fmt: skip


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(
    data, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert main(train_argv(data, out)) == 0
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    argv = ["train", "--out", str(out), "--data-root", str(data), "--quiet", "--resume"]
    keep = {out / "final.pt", out / "last.pt", out / "best.pt"}
    before = {p: h for p, h in snapshot(out).items() if p in keep}
    err = fails([*argv, "--set", "train.epochs=2"], capsys, "no space left on the device")
    assert "the previous last.pt is intact" in err or "the previous best.pt is intact" in err
    assert {p: h for p, h in snapshot(out).items() if p in keep} == before
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert calls


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    fails(["demo", "--out", str(mine)], capsys, "files the demo did not make", mine)
    check_demo_folder(mine, overwrite=True)  # the explicit flag is honoured
    (tmp_path / "old_demo").mkdir()
    (tmp_path / "old_demo" / MARKER).touch()
    (tmp_path / "old_demo" / "report").mkdir()
    check_demo_folder(tmp_path / "old_demo", overwrite=False)  # a demo may replace a demo
    (tmp_path / "file").write_text("x")
    fails(["demo", "--out", str(tmp_path / "file")], capsys, "is a file", tmp_path)


def test_bad_numbers_on_the_command_line_are_refused(run, capsys):
    evaluate = ["evaluate", "--checkpoint", str(run / "final.pt"), "--split", "val"]
    for flag, value, need in (
        ("--scales", "0", "> 0"), ("--iterations", "-2", ">= 0"), ("--limit", "0", ">= 1"),
        ("--pairwise-scale", "nan", ">= 0"), ("--box-fraction", "2", "<= 1"),
    ):  # fmt: skip
        assert main([*evaluate, flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: argument {flag}: expected"), err
        assert need in err


def test_repeated_set_options_all_count(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(data, out)
    split = argv.index("--set") + 3
    assert main([*argv[:split], "--set", *argv[split:], "--set", "train.lr=5e-4"]) == 0
    config = load_checkpoint(out / "final.pt")["config"]
    assert config["data"]["dataset"] == "camvid" and config["train"]["lr"] == 5e-4
    fails(["evaluate", "--checkpoint", str(out), "--split", "val"], capsys, "RUN_DIR/final.pt")


def test_every_option_has_help_and_there_is_a_version(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("piecewise-crf ")


def _train_process(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = train_argv(data, out, "train.val_every=2", *extra)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import sys; from piecewise_crf.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_is_reported_like_ctrl_c(data, tmp_path):
    out = tmp_path / "run"
    process = _train_process(data, out, "train.epochs=1000")
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.startswith("terminated (SIGTERM)") and "--resume" in err
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1


def test_killed_at_random_moments_then_resumed_equals_an_uninterrupted_run(data, tmp_path):
    """kill -9 at random moments (seeded), --resume until done: the same weights, bit for bit,
    and no temp file left behind."""
    straight, epochs = tmp_path / "straight", "train.epochs=12"
    tic = time.monotonic()
    assert _train_process(data, straight, epochs).wait(timeout=300) == 0
    seconds = time.monotonic() - tic  # ~9 s here, ~2 s of it importing torch
    out, kills, rng, epochs_at_kill = tmp_path / "killed", 0, random.Random(0), []
    for attempt in range(12):
        process = _train_process(data, out, epochs, *(["--resume"] if attempt else []))
        try:
            process.wait(timeout=rng.uniform(0.2, 0.8) * seconds if kills < 4 else 300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills += 1
            last = out / "last.pt"
            epochs_at_kill.append(load_checkpoint(last)["epoch"] if last.exists() else 0)
            continue
        assert process.returncode == 0, process.stderr.read()
        break
    assert kills == 4 and max(epochs_at_kill) > 0, epochs_at_kill  # some resumed mid-run
    expected = load_checkpoint(straight / "final.pt")
    got = load_checkpoint(out / "final.pt")
    assert got["epoch"] == expected["epoch"] == 12 and got["step"] == expected["step"]
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
