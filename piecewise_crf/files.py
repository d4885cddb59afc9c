"""Files without losses: atomic writes, safe loads of torch files, and guards for output paths.

Every file piecewise-crf writes goes through `atomic_write`: the bytes go to a temp file in the
same folder (`.NAME.PID.TOKEN.tmp`), are fsynced, then renamed over NAME, so a kill, a crash or
a full disk leaves either the old file or the new one, never a partial one. Ctrl-C and SIGTERM
that arrive during a write are handled once it has finished.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then hand the first one to its handler.

    Raised inside torch.save, an interrupt is masked by the zip writer's cleanup ("RuntimeError:
    unexpected pos ...") or aborts the process when the writer's destructor later meets the
    closed file (exit 1 or -6 in 2 of 30 SIGTERMs sent to a training run here). Python runs signal
    handlers in the main thread only, so other threads need nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signum, frame = caught[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:  # the default action (or one set outside Python)
                os.kill(os.getpid(), signum)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with _interrupts_deferred():
        try:
            # os.open with mode 0o666 lets the umask decide permissions, as for any other file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno in DISK_FULL:
                kept = (
                    f"the previous {path.name} is intact"
                    if path.exists()
                    else "nothing was written"
                )
                raise OSError(
                    f"cannot write {path}: no space left on the device; {kept}. Free some space "
                    "(or choose an output on another disk) and run again"
                ) from err
            raise
    # Persist the rename itself (the directory entry); not possible on every platform.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` through `atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(values: Any, path: str | Path) -> None:
    """`values` as indented JSON, atomically, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(values, indent=2) + "\n", path)


def ensure_writable(folder: str | Path) -> Path:
    """Create `folder` and check a file can be written there, before any long computation."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(
            f"cannot write to the output folder {folder}: {err.strerror or err}; "
            "choose another output path or fix its permissions"
        ) from err
    return folder


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files `atomic_write` left for `names` in `folder` when a process was
    killed mid-write (kill -9 gives it no chance to clean up). Call it only while no other
    process writes these files (the run lock held)."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def read_torch_file(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` with one-line errors: no code in the file runs.

    `what` names the file for the messages ("checkpoint", "backbone weights file").
    """
    path = Path(path)
    if path.is_dir():
        hint = " such as RUN_DIR/final.pt" if what == "checkpoint" else ""
        raise IsADirectoryError(f"{what} {path} is a folder; pass a file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "Unsupported global" in text:
            # torch's advice is to load with weights_only=False: never for a file a user did
            # not make, so it is not repeated here.
            raise ValueError(
                f"refusing to read {what} {path}: it holds Python objects other than tensors "
                "(loading them could run code); use a file of plain tensors, e.g. one saved "
                "with torch.save(model.state_dict(), path)"
            ) from None
        raise ValueError(
            f"cannot read {what} {path}: it is truncated, corrupt or not a PyTorch file "
            f"({type(err).__name__}); copy it again or point to another file"
        ) from None
