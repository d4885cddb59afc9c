"""The output plan: an output is never an input (by any path), two outputs are never one file,
an existing file is replaced only when it is of the output's kind and may be; folders locked."""

import os
import subprocess
import sys

import pytest

from piecewise_crf.errors import ArgumentError
from piecewise_crf.outputs import LOCK, OutputPlan, locked


def refused(plan: OutputPlan, message: str) -> str:
    with pytest.raises(ArgumentError, match=message) as caught:
        plan.check()
    return str(caught.value)


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "val.txt").write_text("a b\n")
    (tmp_path / "label.png").write_bytes(b"a label")
    return tmp_path


def test_an_input_is_never_written_by_any_of_its_names(data):
    (data / "link.png").symlink_to(data / "label.png")
    os.link(data / "label.png", data / "hard.png")
    for name in ("label.png", "link.png", "hard.png", "./label.png"):
        plan = OutputPlan()
        plan.read(data / "label.png")
        plan.write(data / name, "confusion", suffix=".png")
        refused(plan, r"^confusion .* is an input of this command \(.*label.png\)")


def test_two_outputs_are_never_one_file(data):
    plan = OutputPlan()
    plan.write(data / "x.json", "json", suffix=".json")
    plan.write(data / "sub" / ".." / "x.json", "confusion", suffix=".png")
    assert "json and confusion both name" in refused(plan, "both name")


def test_existing_files_are_replaced_only_when_of_their_kind_and_allowed(data):
    plan = OutputPlan()
    plan.write(data / "val.txt", "json", suffix=".json")
    refused(plan, r"val.txt exists and is not a .json file; writing it would replace it")
    (data / "old.json").write_text("{}")
    plan = OutputPlan()
    plan.write(data / "old.json", "json", suffix=".json")
    plan.check()  # named by the user, of its kind: replaced
    plan = OutputPlan()
    plan.write(data / "old.json", "out", suffix=".json", replace=False)
    refused(plan, r"^out .*old.json exists; pass overwrite to replace it")
    plan = OutputPlan()
    plan.write(data, "out", suffix=".onnx")
    refused(plan, "is a folder; name a file")
    plan = OutputPlan()
    plan.write(data / "val.txt" / "m.onnx", "out", suffix=".onnx")
    refused(plan, r"val.txt is a file, not a folder")


def test_a_loop_of_links_is_refused_by_name(data):
    (data / "a.json").symlink_to(data / "b.json")
    (data / "b.json").symlink_to(data / "a.json")
    plan = OutputPlan()
    plan.write(data / "a.json", "json", suffix=".json")
    refused(plan, r"^json .*a.json cannot be followed")
    with pytest.raises(ArgumentError, match="cannot be followed"):
        OutputPlan().read(data / "b.json")


def test_a_folder_is_held_by_one_command_at_a_time(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from piecewise_crf.outputs import locked\n"
        "with locked(Path(sys.argv[1]), 'out'):\n    print('held', flush=True); time.sleep(30)"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == b"held"
        busy = pytest.raises(ArgumentError, match="in use by another piecewise-crf command")
        with busy, locked(tmp_path, "out"):
            pass
    finally:
        other.kill()
        other.wait()
    with locked(tmp_path, "out"):  # the OS let go when the holder was killed
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()  # nothing left behind in the user's folder
