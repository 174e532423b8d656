"""The folder of a report's images, shared safely between runs.

``<report>_files/`` holds one sub-folder per run (``run-<time>-<hex>``). A run writes its images only
into its own sub-folder; the HTML and JSON, each replaced atomically, then point at it, and only after
they do (:meth:`ReportFolder.commit`) are older runs' sub-folders removed. A run killed at any moment
therefore leaves the previous report whole: its HTML still points at its own, untouched images.

An exclusive lock on ``.lock`` (``fcntl.flock``; the operating system releases it when the process
dies, so no stale lock outlives a crash) keeps two runs out of one folder: the second refuses to start
and names the process that holds it. Where ``fcntl`` does not exist (Windows) there is no lock, and
the swap alone keeps the last whole report.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER = ".cnnaudit-images"
LOCK = ".lock"
RUN_PREFIX = "run-"


class ReportFolder:
    """``root`` (``<report>_files``) claimed by this run: :meth:`claim`, then :meth:`commit` after each
    write of the report files, :meth:`release` at the end."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.run_dir: Path | None = None
        self._lock: IO[str] | None = None

    def claim(self) -> Path:
        """Lock ``root`` and create this run's image folder in it; returns that folder.

        ``ValueError`` when ``root`` holds files cnnaudit did not write, or another run holds the lock.
        """
        root = self.root
        if root.exists() and not (root / MARKER).exists() and any(root.iterdir()):
            raise ValueError(
                f"{root} exists and was not made by cnnaudit; the report keeps its images there — "
                "move it away or choose another report path"
            )
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.exists():
            marker.write_text("images of cnnaudit reports: one run-* folder per run; older ones are removed once a new report replaces theirs\n")
        self._lock = _lock(root / LOCK)
        self.run_dir = root / f"{RUN_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        self.run_dir.mkdir()
        return self.run_dir

    def commit(self) -> None:
        """The report files now point at this run's images: remove older runs' images (and loose JPEGs of
        the earlier flat layout)."""
        if self.run_dir is None:
            return
        for entry in self.root.iterdir():
            if entry == self.run_dir:
                continue
            if entry.is_dir() and not entry.is_symlink() and entry.name.startswith(RUN_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file() and entry.suffix == ".jpg":
                entry.unlink(missing_ok=True)

    def release(self) -> None:
        """Let other runs use the folder."""
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None


def _lock(path: Path) -> IO[str] | None:
    """An open handle of ``path`` holding an exclusive lock, with this process' id written in it."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(
            f"another cnnaudit run (process {holder}) is writing a report with images in {path.parent}; "
            "wait for it to finish, or give this run another --cnnaudit-report / --cnnaudit-json path"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
