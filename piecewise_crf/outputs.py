"""The output plan: every path a command will write, checked before any work.

A command lists what it reads (`read`) and what it will write (`write`), then calls `check`:
no output may be an input (the same file by any path: symlinks and hard links included), two
outputs may not be one file, an existing file is replaced only when it is of the output's kind
and the command may replace it (the user named it, or asked to overwrite), and every folder
must be one that can be made and written to. Nothing is written by the plan itself; the writes
go through `files.atomic_write`. `locked` keeps a second command out of a folder a command
fills.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from piecewise_crf.errors import ArgumentError
from piecewise_crf.files import ensure_writable

LOCK = ".piecewise-crf.lock"  # in a folder a command fills; empty, held while it runs


@dataclass(frozen=True)
class Output:
    path: Path
    parameter: str  # the argument that names it, how errors name it
    suffix: str | None  # its kind: an existing file of another kind is never replaced
    replace: bool  # an existing file of its kind may be replaced


def resolved(path: Path, parameter: str) -> Path:
    """`path` with every symlink followed; ArgumentError for a loop of links."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError: Python < 3.13's "Symlink loop"
        reason = str(err)
        raise ArgumentError(
            lambda name: (
                f"{name(parameter)} {path} cannot be followed ({reason}); choose another path"
            )
        ) from None


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode): the same for every hard link to it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


@dataclass
class OutputPlan:
    inputs: dict[Path, Path] = field(default_factory=dict)  # resolved -> as given
    outputs: list[Output] = field(default_factory=list)

    def read(self, *paths: str | Path | None) -> None:
        """Files the command reads, which it must never write."""
        for path in paths:
            if path is not None:
                self.inputs[resolved(Path(path), "input")] = Path(path)

    def write(
        self,
        path: str | Path | None,
        parameter: str,
        *,
        suffix: str | None = None,
        replace: bool = True,
    ) -> Path | None:
        """A file the command will write; `path` as a Path (None stays None: not written)."""
        if path is None:
            return None
        self.outputs.append(Output(Path(path), parameter, suffix, replace))
        return Path(path)

    def check(self) -> None:
        """ArgumentError naming the argument of the first output that must not be written."""
        named: dict[Path, Output] = {}
        inode_of: dict[tuple[int, int] | None, Path] = {}
        for out in self.outputs:
            target = resolved(out.path, out.parameter)
            first = named.setdefault(target, out)
            if first is not out:
                raise ArgumentError(
                    lambda name, a=first, b=out: (
                        f"{name(a.parameter)} and {name(b.parameter)} "
                        f"both name {b.path}; give each its own file"
                    )
                )
            source = self.inputs.get(target)
            if source is None and out.path.exists():
                if not inode_of:
                    inode_of = {_identity(p): p for p in self.inputs.values()}
                source = inode_of.get(_identity(out.path))
            if source is not None:
                raise ArgumentError(
                    lambda name, o=out, s=source: (
                        f"{name(o.parameter)} {o.path} is an input of "
                        f"this command ({s}); writing it would destroy it: choose another path"
                    )
                )
            _check_existing(out)
            _check_folder(out)

    def folders(self) -> list[Path]:
        """The folders the outputs go into, made and tested for writing (call after `check`)."""
        folders = sorted({out.path.parent for out in self.outputs})
        return [ensure_writable(folder) for folder in folders]


def _check_existing(out: Output) -> None:
    path = out.path
    if path.is_dir():
        raise ArgumentError(lambda name: f"{name(out.parameter)} {path} is a folder; name a file")
    if not path.exists() and not path.is_symlink():
        return
    if out.suffix and path.suffix.lower() != out.suffix:
        raise ArgumentError(
            lambda name: (
                f"{name(out.parameter)} {path} exists and is not a {out.suffix} file; "
                f"writing it would replace it: choose a {out.suffix} path"
            )
        )
    if not out.replace:
        raise ArgumentError(
            lambda name: (
                f"{name(out.parameter)} {path} exists; pass {name('overwrite')} to "
                "replace it, or choose another path"
            )
        )


def _check_folder(out: Output) -> None:
    """The nearest existing folder above the output must be a folder, not a file."""
    parent = out.path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArgumentError(
            lambda name: (
                f"{name(out.parameter)} {out.path}: {parent} is a file, not a folder; "
                "choose another path"
            )
        )


@contextmanager
def locked(folder: Path, parameter: str) -> Iterator[None]:
    """Hold `folder` for the block: a second piecewise-crf command that wants it is refused
    (ArgumentError naming `parameter`) instead of mixing its files in. The OS drops the lock on
    any exit, kill -9 included; the empty lock file is removed after the block."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a second process is not detected
        yield
        return
    path = folder / LOCK
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ArgumentError(
            lambda name: (
                f"{folder} is in use by another piecewise-crf command (it holds "
                f"{LOCK}); wait for it to finish or choose another {name(parameter)}"
            )
        ) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def inputs_of(dataset: object) -> Iterable[Path]:
    """The files a dataset reads (its images and labels, where it lists them)."""
    for attribute in ("image_paths", "label_paths"):
        yield from getattr(dataset, attribute, ())
    if hasattr(dataset, "path"):  # one file for the whole split (NYUDv2's .mat)
        yield dataset.path
