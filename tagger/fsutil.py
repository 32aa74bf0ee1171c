"""Files that are whole or absent: atomic files and folders, an output-folder lock, cleanup.

Every temporary name is ``.{target}.{pid}.{random}.tmp`` beside its target, so a later
run can tell a temporary left by a killed process (its pid is gone) from one that a live
process is still writing, and remove only the former.

* :func:`atomic_file` / :func:`atomic_write_text` / :func:`atomic_write_bytes` - write a
  sibling temporary, fsync it, rename it over the target.
* :func:`replace_dir` - put a finished temporary folder in place of a folder.  The old
  folder is first renamed to ``.{name}.old``; between the two renames a reader finds the
  complete old model there (:func:`recover_dir` / ``tagger.io.resolve_model_dir``).
* :class:`OutputLock` - ``fcntl.flock`` on ``OUT/.tagger.lock``, so a second
  ``tagger train`` into the same folder stops with one line instead of a traceback.
* :func:`start_run` - under the lock: remove what killed runs left, and move the previous
  run's outputs into ``OUT/previous/`` so fresh logs never sit beside an old model.
"""
from __future__ import annotations

import contextlib
import hashlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from tagger.errors import TaggerError

LOCK_NAME = ".tagger.lock"
PREVIOUS = "previous"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


# ----------------------------------------------------------------------------- contents
def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- temporaries
def temp_sibling(target: Path) -> Path:
    """A fresh temporary name beside `target` that records this process's pid."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def cleanup_stale(folder: str | os.PathLike, name: str | None = None, all_pids: bool = False) -> list[Path]:
    """Remove temporaries in `folder` whose writer is dead (every one with `all_pids`, e.g.
    under the output lock); only those of target `name` when given. Returns what went."""
    folder = Path(folder)
    gone: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return gone
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and (all_pids or not _pid_alive(pid)):
            _remove(entry)
            gone.append(entry)
    return gone


def _fsync_dir(folder: Path) -> None:
    """fsync a folder (its entries) or a file (its data); best effort, as not every
    filesystem lets a folder be opened for it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """``with atomic_file(path) as fh: fh.write(...)``: `path` appears complete or not at all.

    Stale temporaries of the same target left by killed processes are removed first.
    """
    target = Path(target)
    cleanup_stale(target.parent, target.name)
    tmp = temp_sibling(target)
    binary = "b" in mode
    try:
        with open(tmp, mode, **({} if binary else {"encoding": encoding})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(target)  # a full disk says so at write or fsync, without a name
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_file(path, "w", encoding) as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


# ----------------------------------------------------------------------------- folders
def old_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> bool:
    """If a swap was killed between its two renames, put the old folder back. True if it did."""
    path = Path(path)
    old = old_sibling(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        return True
    return False


def new_temp_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    cleanup_stale(target.parent, target.name)
    tmp = temp_sibling(target)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Rename the complete folder `tmp` to `path`, replacing what is there.

    At every instant either `path` or ``.{name}.old`` holds a complete folder.
    """
    for f in tmp.iterdir():
        _fsync_dir(f)
    _fsync_dir(tmp)
    recover_dir(path)
    old = old_sibling(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- output lock
class OutputLock:
    """An exclusive, non-blocking lock on an output folder (created if missing).

        with OutputLock(output_dir):
            ...  # the only writer of output_dir

    A second holder gets a one-line TaggerError naming the folder and the pid holding it.
    The lock dies with its process, so a killed run never leaves the folder locked. On
    release, a folder this lock created and nothing else was written to is removed again.
    """

    def __init__(self, folder: str | os.PathLike, option: str = "--output"):
        self.folder = Path(folder)
        self.option = option
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> "OutputLock":
        import fcntl

        check_output_dir(self.folder, self.option)
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise TaggerError(
                    f"{self.option} {self.folder}: another tagger run (pid {holder}) is writing there; "
                    f"wait for it to finish or choose another {self.option}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file that its last holder removed while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        lock = self.folder / LOCK_NAME
        with contextlib.suppress(OSError):
            if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
                lock.unlink()
                self.folder.rmdir()
            else:
                os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def start_run(folder: str | os.PathLike, outputs: Iterable[str], resume: bool = False) -> Path | None:
    """Call under :class:`OutputLock`: remove every temporary in `folder` (no other writer
    is alive), finish a killed swap, and move the previous run's `outputs` (model folders,
    logs) into ``folder/previous/`` (replacing an older one). Returns that folder, if used.
    With `resume` the previous run's outputs stay: the run goes on with them."""
    folder = Path(folder)
    cleanup_stale(folder, all_pids=True)
    present = []
    for name in outputs:
        for legacy in folder.glob(f".{name}.*.tmp"):  # temporaries named before they carried a pid
            _remove(legacy)
        recover_dir(folder / name)
        if (folder / name).exists():
            present.append(name)
    if not present or resume:
        return None
    prev = folder / PREVIOUS
    tmp = new_temp_dir(prev)
    for name in present:
        os.replace(folder / name, tmp / name)
    replace_dir(tmp, prev)
    return prev


# ----------------------------------------------------------------------------- checks
def check_output_dir(path: str | os.PathLike, option: str = "--output") -> Path:
    """Raise a one-line TaggerError unless `path` is, or can be made, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TaggerError(f"{option} {path}: exists and is not a folder; choose a folder path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise TaggerError(f"{option} {path}: {probe} is a file, so no folder can be made under it; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TaggerError(f"{option} {path}: {probe} is not writable; choose a folder you can write to")
    return path


def check_output_file(path: str | os.PathLike, option: str = "--output") -> Path:
    """Raise a one-line TaggerError unless `path` can be written as a file (folder exists, writable)."""
    path = Path(path)
    if path.is_dir():
        raise TaggerError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.exists():
        raise TaggerError(f"{option} {path}: folder {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise TaggerError(f"{option} {path}: {parent} is not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TaggerError(f"{option} {path}: {parent} is not writable; choose a folder you can write to")
    return path


OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; check its permissions or choose another path",
    errno.EPERM: "operation not permitted; check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder; give a file name",
    errno.EEXIST: "already exists and is in the way; choose another path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?); fix or remove the link",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: the file it names, and what to do."""
    hint = OS_HINTS.get(err.errno) or (err.strerror or str(err) or type(err).__name__).splitlines()[0]
    return f"{err.filename}: {hint}" if err.filename is not None else hint
