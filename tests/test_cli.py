"""The command line itself: arguments, one-line errors spelt with the command's flags, --import."""

import argparse

import pytest
from cli_checks import fails

from piecewise_crf.commands.cli import COMMANDS, build_parser, main, one_line
from piecewise_crf.errors import ArgumentError


def test_every_option_has_help_and_there_is_a_version(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(COMMANDS)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("piecewise-crf ")


def test_parsing_imports_neither_torch_nor_a_command():
    """`piecewise-crf --help` answers at once: the parser needs no library beyond the config."""
    import subprocess
    import sys

    code = (
        "import sys; from piecewise_crf.commands.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('piecewise_crf.commands.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['piecewise_crf.commands.cli']"


def test_library_errors_name_the_flag_of_the_command_at_hand():
    err = ArgumentError(lambda name: f"{name('limit')} must be >= 1; or pass {name('root')}")
    assert str(err) == "limit must be >= 1; or pass root"  # Python's names
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {
        a.dest: a.option_strings[0] for a in sub.choices["evaluate"]._actions if a.option_strings
    }
    assert one_line(err, lambda name: flags.get(name, name)) == (
        "--limit must be >= 1; or pass --data-root"
    )
    rebuilt = ArgumentError(str(err))  # how DataLoader workers and pickle rebuild it
    assert str(rebuilt) == str(err)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["evaluate", "--checkpoint", "x.pt", "--scales", "0x"],
            "argument --scales: expected a finite",
        ),
        (
            ["evaluate", "--checkpoint", "x.pt", "--pairwise-scale", "nan"],
            "expected a finite number",
        ),
        (
            ["evaluate", "--checkpoint", "x.pt", "--limit", "2.5"],
            "argument --limit: expected a whole",
        ),
        (["evaluate", "--checkpoint", "x.pt", "--pairwise-mode", "rw"], "invalid choice: 'rw'"),
        (["export", "--checkpoint", "x.pt", "--out", "m.onnx"], "--size"),
        (["tune-dense-crf", "--checkpoint", "x.pt", "--bi-xy-stds", "inf"], "finite number"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, match, capsys):
    err = fails(argv, capsys, match)
    assert err.endswith("(see piecewise-crf " + argv[0] + " --help)\n")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--limit", "0", "--limit must be a positive number of images, got 0"),
        ("--iterations", "-2", "crf.iterations must be >= 0, got -2"),
        ("--box-fraction", "2", "crf.box_fraction must be in (0, 1], got 2.0"),
        ("--scales", "0", "--scales must be positive numbers, got [0.0]"),
    ],
)
def test_ranges_are_checked_once_by_the_library(checkpoint, flag, value, message, capsys):
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--quiet"]
    fails([*argv, flag, value], capsys, message)


def test_import_names_the_missing_module(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fails(["--import", "no_such_extension", "demo", "--out", "x"], capsys, "no module")
    (tmp_path / "broken_extension.py").write_text("import no_such_dependency\n")
    fails(["--import", "broken_extension", "demo"], capsys, "no_such_dependency")
    assert not (tmp_path / "x").exists()


def test_whatever_fails_after_a_stop_is_reported_as_the_stop(monkeypatch, capsys):
    """A signal raises wherever the process is; the library it lands in may turn it into an
    error of its own (tqdm's lock did): after a SIGTERM, any failure ends as the SIGTERM."""
    import os
    import signal

    import piecewise_crf.commands.export as export_command
    from piecewise_crf.commands.cli import Terminated

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Terminated:
            raise AttributeError("a library's state, broken by the interrupt") from None

    monkeypatch.setattr(export_command, "run", run)
    argv = ["export", "--checkpoint", "x.pt", "--out", "m.onnx", "--size", "64", "64"]
    assert main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("terminated (SIGTERM): the files already written")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_stop_python_swallows_is_sent_again(monkeypatch, capsys):
    """A signal that lands where an exception cannot propagate (a finalizer, an at-fork hook)
    is swallowed by Python; the stop is delivered again in the main flow, reported once."""
    import gc
    import os
    import signal
    import time

    import piecewise_crf.commands.export as export_command

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # its Terminated is raised in here: swallowed

    steps = []

    def run(args):
        Finalizer()
        gc.collect()
        for _ in range(200):  # 2 s; the stop is sent again after 0.05 s
            steps.append(time.sleep(0.01))
        raise AssertionError("the swallowed stop never came back")

    monkeypatch.setattr(export_command, "run", run)
    argv = ["export", "--checkpoint", "x.pt", "--out", "m.onnx", "--size", "64", "64"]
    assert main(argv) == 128 + signal.SIGTERM
    assert len(steps) < 100
    err = capsys.readouterr().err
    assert err.startswith("terminated (SIGTERM)") and err.count("\n") == 1, err  # no "ignored"


def test_a_forked_child_without_handlers_of_its_own_ends_on_a_stop(monkeypatch):
    """A child forked inside a command (a DataLoader worker before its set-up) dies of SIGTERM
    as by default, instead of ignoring it and outliving a parent that waits for it."""
    import os
    import signal

    import piecewise_crf.commands.export as export_command

    status = []

    def run(args):
        pid = os.fork()
        if pid == 0:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os._exit(0)  # reached only if the child survived the signal
        status.append(os.waitpid(pid, 0)[1])
        return 0

    monkeypatch.setattr(export_command, "run", run)
    argv = ["export", "--checkpoint", "x.pt", "--out", "m.onnx", "--size", "64", "64"]
    assert main(argv) == 0
    assert os.WIFSIGNALED(status[0]) and os.WTERMSIG(status[0]) == signal.SIGTERM


def test_memory_running_out_is_one_line(monkeypatch, capsys):
    import piecewise_crf.commands.export as export_command

    def run(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 240000000000 bytes.")  # fmt: skip

    monkeypatch.setattr(export_command, "run", run)
    argv = ["export", "--checkpoint", "x.pt", "--out", "m.onnx", "--size", "64", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of CPU memory;") and err.count("\n") == 1


def test_an_extension_with_a_syntax_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo_extension.py").write_text("def f(:\n    pass\n")
    fails(["--import", "typo_extension", "demo"], capsys, "typo_extension.py line 1")


def test_a_base_that_is_not_a_name_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("preset: [demo]\n")
    fails(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")], capsys,
          "base: must name a config file")  # fmt: skip
