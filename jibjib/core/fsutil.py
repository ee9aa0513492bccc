"""Atomic file writes: a reader sees the old complete file or the new one, never half.

Every output goes to a hidden temporary name in the destination folder and is
renamed into place, so a killed job cannot leave a truncated file that a later
run would trust.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from jibjib.core.errors import OutputError

TMP_MARK = ".tmp-"


def _temp_name(path: Path) -> Path:
    """Hidden, per-process, and keeping the suffixes of `path` (Keras checks them)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}{''.join(path.suffixes)}")


@contextlib.contextmanager
def _renamed_into_place(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` if the block succeeds."""
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    # Any error here (the folder is a file, say) would hide the one that matters.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; rename it over `path` on success."""
    with _renamed_into_place(Path(path)) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f


def atomic_save(path: str | os.PathLike, save: Callable[[Path], Any]) -> None:
    """Let `save(tmp)` write a temporary file next to `path` (for libraries that
    write by file name, such as Keras), then rename it over `path`."""
    with _renamed_into_place(Path(path)) as tmp:
        save(tmp)


def save_npz(path: str | os.PathLike, compress: bool = False, **arrays: Any) -> None:
    """Like np.savez (or np.savez_compressed with `compress`), but byte-identical for identical arrays.

    np.savez stamps each member with the current time; a fixed stamp lets a
    rerun be compared byte for byte with an uninterrupted run.  The archive is
    built in memory and written in one call: many small writes cost more than
    the data.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = archive.compression
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_dead_temps(path: str | os.PathLike) -> int:
    """Delete temporary copies of `path` left by killed processes; returns how many.

    The small tables are rewritten in place by later runs, so unlike the
    feature folders nothing else would ever sweep their folder.  The writer's
    pid is part of each temporary name: a temp whose process still runs on
    this machine is being written and is left alone.  (On a shared file
    system a pid from another node can look dead here; Snakemake never runs
    two jobs for one output at once, so that writer would be a stray.)
    """
    path = Path(path)
    prefix = f".{path.name}{TMP_MARK}"
    removed = 0
    try:
        candidates = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return 0  # no folder yet: nothing to clean
    for entry in candidates:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _discard(Path(entry.path))
            removed += 1
    return removed


@contextlib.contextmanager
def _open_table(path: str | os.PathLike) -> Iterator[IO[Any]]:
    """`atomic_open` for the small tables, after sweeping their dead temporary copies."""
    remove_dead_temps(path)
    with atomic_open(path) as f:
        yield f


def write_json(path: str | os.PathLike, data: Any) -> None:
    with _open_table(path) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_tsv(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame as TSV (no index), atomically."""
    with _open_table(path) as f:
        frame.to_csv(f, sep="\t", index=False, lineterminator="\n")


def tsv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A header and rows as TSV text, quoted as pandas' `to_csv` quotes."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue()


def write_rows(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a header and rows as TSV, atomically."""
    with _open_table(path) as f:
        f.write(tsv_text(columns, rows))


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_or(path: str | os.PathLike, unreadable: str) -> str:
    """`sha256_file`, or `unreadable` for a file that cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return unreadable


def stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    """Size, mtime and ctime: any write changes the ctime, even one that restores the mtime."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files and folders a killed run left behind; returns how many."""
    removed = 0
    if folder.is_dir():
        for tmp in sorted(folder.rglob(f".*{TMP_MARK}*")):  # a folder sorts before what it holds
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            elif not tmp.parent.exists():
                continue  # it was inside a folder removed just before
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed
