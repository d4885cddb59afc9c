"""Training: the schedule, the loss of a step, the run folder, budgets, resume, refusals, DDP."""

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import piecewise_crf.training.loop as loop
from piecewise_crf.checkpoint import load_checkpoint
from piecewise_crf.config import CRFConfig
from piecewise_crf.crf import grid_to_edge_list, mean_field
from piecewise_crf.model import build_model
from piecewise_crf.training import run_dir
from piecewise_crf.training.losses import mean_field_loss, piecewise_loss
from piecewise_crf.training.optim import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lr_factor_is_the_poly_schedule_of_steps_or_time_by_hand():
    assert lr_factor(0, 10, 0.9) == 1.0
    assert lr_factor(5, 10, 1.0) == 0.5
    assert lr_factor(5, 10, 2.0) == 0.25
    assert lr_factor(5, 10, 0.9) == pytest.approx(0.5358867313)  # 0.5 ** 0.9 = 2 ** -0.9
    assert lr_factor(10, 10, 0.9) == 0.0
    assert lr_factor(12, 10, 0.9) == 0.0  # past the end: clamped, not a complex number
    assert lr_factor(1, 4, 1.0, elapsed=1000.0) == 0.75  # no budget: the clock is ignored
    assert lr_factor(1, 4, 1.0, elapsed=30.0, budget=60.0) == 0.5  # time is further along
    assert lr_factor(3, 4, 1.0, elapsed=30.0, budget=60.0) == 0.25  # steps are further along
    assert lr_factor(1, 4, 2.0, elapsed=45.0, budget=60.0) == 0.0625  # (1 - 3/4) ** 2
    assert lr_factor(1, 4, 0.9, elapsed=90.0, budget=60.0) == 0.0  # budget overrun: clamped


def test_step_loss_follows_the_training_config(make_config):
    config = make_config()
    tc = config.train
    tc.pairwise_weight, tc.edge_fraction, tc.memory_efficient = 0.5, 0.5, True
    torch.manual_seed(0)
    model = build_model(config.model)
    images = torch.rand(1, 3, 64, 64)
    labels = torch.randint(0, config.model.num_classes, (1, 64, 64))
    weights = torch.linspace(0.5, 2.0, config.model.num_classes)
    torch.manual_seed(1)  # edge sampling draws the same offsets in both
    terms = piecewise_loss(model, images, labels, tc, weights=weights)
    torch.manual_seed(1)
    expected = model.loss(
        images, labels, pairwise_weight=0.5, edge_fraction=0.5, memory_efficient=True,
        class_weights=weights,
    )  # fmt: skip
    assert torch.equal(terms.total, expected.total)
    assert torch.equal(terms.total, terms.unary + 0.5 * terms.pairwise)


def test_run_folder_holds_checkpoints_log_config_and_curves(tiny_training):
    result, run = tiny_training.result, tiny_training.out
    for name in ("final.pt", "last.pt", "best.pt", "config.yaml", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "final.pt")
    assert ckpt.classes[1] == "object_a" and len(ckpt.palette) == 5
    assert ckpt.run.epoch == 1 and ckpt.run.step == 2
    assert {"val_unary_miou", "val_crf_miou"} <= set(ckpt.metrics)
    state = result.model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in ckpt.model.items())
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["unary_loss"]) > 0
    assert set(rows[0]) == set(run_dir.LOG_FIELDS)
    last = torch.load(run / "last.pt", weights_only=True)  # no pickled code anywhere
    assert {"optimizer", "rng", "scaler"} <= set(last)
    state = load_checkpoint(run / "last.pt").run
    assert (state.epoch, state.step, state.history) == (1, 2, result.history)
    assert state.best == result.history[0]["val_crf_miou"] and state.train_seconds > 0


@pytest.mark.slow
def test_class_balance_weights_the_loss_by_training_frequencies(
    make_config, tiny_run, tmp_path, caplog
):
    config = make_config()
    config.train.class_balance = 1.0
    with caplog.at_level(logging.INFO, logger="piecewise_crf"):
        result = tiny_run(tmp_path / "run", config)
    printed = "\n".join(r.getMessage() for r in caplog.records if "class weights" in r.getMessage())
    assert "class weights (train.class_balance=1.0): background " in printed
    # the background fills most pixels, so it weighs least
    weights = dict(
        part.rsplit(" ", 1) for part in printed.split(": ", 1)[1].split("\n")[0].split(", ")
    )
    assert float(weights["background"]) == min(float(v) for v in weights.values()) < 1.0
    assert torch.isfinite(torch.tensor(result.history[-1]["unary_loss"]))


@pytest.mark.slow
def test_minutes_budget_stops_mid_epoch_with_lr_following_the_clock(
    make_config, tiny_run, tmp_path, monkeypatch
):
    class Clock:  # every reading is one second after the previous: each step "takes" 1 s
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 1.0
            return cls.now

    monkeypatch.setattr(loop, "time", Clock)
    config = make_config(epochs=10)
    config.train.minutes = 3 / 60
    config.train.lr_power = 1.0
    result = tiny_run(tmp_path / "run", config)
    # 2 steps per epoch: the third step exhausts 3 s, in epoch 2, which is then validated
    assert [r["step"] for r in result.history] == [2, 3]
    assert result.history[-1]["val_unary_miou"] is not None
    # the third step ran at lr * (1 - 2 s / 3 s), not at the epoch schedule's lr * (1 - 2 / 20)
    assert result.history[-1]["lr"] == pytest.approx(config.train.lr / 3)
    assert load_checkpoint(tmp_path / "run" / "last.pt").run.train_seconds == 3.0
    # resuming a finished budget trains no further
    resumed = tiny_run(tmp_path / "run", config, resume=True)
    assert resumed.history[-1]["step"] == 3


@pytest.mark.slow
def test_freeze_layers_keeps_the_first_backbone_layers_at_their_initial_weights(
    make_config, tiny_run, tmp_path
):
    config = make_config()
    config.train.freeze_layers = 3  # the tiny backbone's first conv, BatchNorm and ReLU
    torch.manual_seed(config.train.seed)  # the seed _train builds its model under
    initial = build_model(config.model).featmap.backbone.features
    trained = tiny_run(tmp_path / "run", config).model.featmap.backbone.features
    for layer in (0, 1):
        for before, after in zip(
            initial[layer].parameters(), trained[layer].parameters(), strict=True
        ):
            assert torch.equal(before, after)
    assert not torch.equal(initial[3].weight, trained[3].weight)  # the next conv trains

    config.train.freeze_layers = len(trained) + 1
    with pytest.raises(ValueError, match=r"train.freeze_layers must be between 0 and 15"):
        tiny_run(tmp_path / "bad", config)


def killed_after_the_first_checkpoint(monkeypatch):
    """Make the next run stop (as if killed) right after its first last.pt and log.csv."""
    real_write_log = run_dir.write_log

    def killed(history, path):
        real_write_log(history, path)
        monkeypatch.setattr(run_dir, "write_log", real_write_log)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir, "write_log", killed)


@pytest.mark.slow
def test_resume_after_a_kill_gives_bitwise_identical_weights(
    make_config, tiny_run, tmp_path, monkeypatch
):
    straight = tiny_run(tmp_path / "straight", make_config(epochs=2)).model.state_dict()
    killed_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "resumed", make_config(epochs=2))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt").run.epoch == 1
    resumed = tiny_run(tmp_path / "resumed", make_config(epochs=2), resume=True).model.state_dict()

    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    rows = list(csv.DictReader((tmp_path / "resumed" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


@pytest.mark.slow
def test_refuses_to_overwrite_a_run_unless_asked(tiny_training, tiny_run, tmp_path):
    shutil.copytree(tiny_training.out, tmp_path / "run")
    before = (tmp_path / "run" / "final.pt").read_bytes()
    with pytest.raises(ValueError, match="pass resume to continue it or overwrite to replace it"):
        tiny_run(tmp_path / "run")
    assert (tmp_path / "run" / "final.pt").read_bytes() == before
    tiny_run(tmp_path / "run", overwrite=True)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    make_config, tiny_run, tmp_path, monkeypatch
):
    real_forward = loop.PiecewiseLoss.forward
    calls = []

    def poisoned(self, images, labels):
        unary, pairwise, total = real_forward(self, images, labels)
        calls.append(1)
        return unary, pairwise, total * float("nan") if len(calls) == 3 else total

    monkeypatch.setattr(loop.PiecewiseLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 3 \(epoch 2\).*last.pt \(epoch 1\)"):
        tiny_run(tmp_path / "run", make_config(epochs=2))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.run.epoch == 1
    assert all(torch.isfinite(v).all() for v in ckpt.model.values() if v.is_floating_point())
    assert not (tmp_path / "run" / "final.pt").exists()


def test_read_only_output_folder_fails_before_training(tiny_run, read_only_folder):
    with pytest.raises(PermissionError, match="cannot write to the output folder .*locked"):
        tiny_run(read_only_folder)
    assert list(read_only_folder.iterdir()) == []


def test_dataset_and_config_class_counts_must_agree(make_config, tiny_run, tmp_path):
    config = make_config()
    config.model.num_classes = 3
    with pytest.raises(ValueError, match="5 classes but model.num_classes is 3"):
        tiny_run(tmp_path / "run", config)


@pytest.mark.slow
def test_resume_with_another_architecture_says_what_differs(
    make_config, tiny_run, tmp_path, monkeypatch
):
    killed_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "run", make_config(epochs=2))
    config = make_config(epochs=2)
    config.model.hidden = 32
    with pytest.raises(ValueError, match=r"hidden: 32 vs 16"):
        tiny_run(tmp_path / "run", config, resume=True)


def test_mean_field_loss_is_weighted_nll_of_general_mean_field(make_config):
    """Joint training's loss against mean-field in the general edge-list form, by hand."""
    config = make_config()
    torch.manual_seed(0)
    model = build_model(config.model).double()
    images = torch.rand(2, 3, 80, 96, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 80, 96))
    labels[:, :10] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.5], dtype=torch.float64)
    crf = CRFConfig(iterations=2, pairwise_mode="raw", pairwise_scale=0.5)
    loss = mean_field_loss(model, images, labels, crf, weights=w)
    potentials = model(images)
    h, wg = potentials.unary.shape[-2:]
    scaled = [(o, 0.5 * z) for _, o, z in potentials.scores.pairwise]
    edges, scores = grid_to_edge_list(scaled, h, wg)
    q = mean_field(potentials.unary.flatten(2).transpose(1, 2), edges, scores, 2)
    nodes = model.node_labels(labels, (h, wg)).flatten(1)
    valid = nodes != 255
    safe = nodes.masked_fill(~valid, 0)
    terms = -q.log().gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    weights = w[safe] * valid
    torch.testing.assert_close(loss, (terms * weights).sum() / weights.sum())
    loss.backward()
    assert model.pairwise_nets["above_below"].fc1.weight.grad.abs().sum() > 0


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from conftest import tiny_config, _tiny_run
dist.init_process_group("gloo")
config = tiny_config(epochs={epochs})
config.train.minutes = {minutes}
if {minutes} and dist.get_rank() == 1:  # a clock racing ahead: alone, it would stop after 1 step
    import itertools, piecewise_crf.training.loop as loop
    ticks = itertools.count(step=1000.0)
    loop.time = type("Clock", (), {{"perf_counter": staticmethod(lambda: next(ticks))}})
result = _tiny_run({out!r}, config)
flat = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
assert torch.equal(gathered[0], gathered[1]), "weights differ between ranks"
print("rank", dist.get_rank(), "ok", flush=True)
dist.barrier()  # a rank that tears gloo down while the other is still in a collective aborts
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("epochs, minutes", [(1, 0), (2, 30)], ids=["epochs", "rank0-clock"])
def test_torchrun_two_cpu_processes_keep_weights_in_sync(tmp_path, epochs, minutes):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    script = tmp_path / "ddp.py"
    script.write_text(
        DDP_SCRIPT.format(
            tests=str(Path(__file__).parent),
            out=str(tmp_path / "run"),
            epochs=epochs,
            minutes=minutes,
        )
    )
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(script)]
    for _ in range(3):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail("torchrun did not finish in time")
        # Seen here in about 1 full-suite run in 3, never in 15 runs of this test alone: a rank
        # aborts about 3 s after the launch with "terminate called without an active
        # exception" (SIGABRT) from C++ code, with no Python traceback. Not tied to our code
        # yet; a rerun still checks what this test is for, the ranks' weights staying equal.
        if "terminate called without an active exception" not in done.stderr:
            break
    if done.returncode != 0 and "rank" not in done.stdout and "Address" in done.stderr:
        pytest.skip(f"torchrun cannot start here: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ok") == 2
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    # 8 images, 2 per rank and step; a budget follows rank 0's clock on every rank
    assert ckpt.run.epoch == epochs and ckpt.run.step == 2 * epochs
    assert (tmp_path / "run" / "log.csv").is_file()
