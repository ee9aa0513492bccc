"""Content signatures of the species folders: what decides whether a feature shard reruns.

Snakemake reruns a job when an input file is newer than its output, and in
9.x that check cannot be switched off (`--rerun-triggers` without `mtime`
changes nothing).  A `git checkout` or a copy sets new modification times on
every WAV, so with the WAVs as inputs the feature shards, and after them
labels, split and hours of training, would rerun although nothing changed.

So a feature shard's input is not its WAVs but one small file per species,
`<signature_dir>/<label>.tsv`, listing path, size and SHA-256 of every file
in the folder.  It is rewritten when the folder's content or file set really
changed, never otherwise, and Snakemake's own timestamp logic does the rest.

Hashing every file on every run would cost minutes on a large corpus, so a
per-species stat cache (`<signature_dir>/.stat-cache/<label>.tsv`) keeps each
file's hash together with its size, mtime and ctime: only files whose stat
changed are hashed again, and the cache is updated, so a checkout costs one
hashing pass, not one per run.  The ctime is part of the key because any
write changes it, even one that restores the old mtime (`cp -p`, `rsync -t`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import fsutil
from .qc import ignore_reason

SIGNATURE_COLUMNS = ("path", "size", "sha256")
CACHE_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "sha256")
CACHE_FOLDER = ".stat-cache"
# Ignored files (hidden, not WAV) reach only the QC table, where their content
# does not matter: they are listed, not hashed.
NOT_HASHED = "-"
# A file we cannot read now: listed so the feature step can reject it with a
# reason, never cached, so it is hashed again once it becomes readable.
UNREADABLE = "unreadable"


@dataclasses.dataclass(frozen=True)
class _Entry:
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str

    def same_stat(self, stat: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns) == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclasses.dataclass
class RefreshReport:
    files: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    changed_species: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def signature_path(signature_dir: Path, label: str) -> Path:
    return signature_dir / f"{label}.tsv"


def _cache_path(signature_dir: Path, label: str) -> Path:
    return signature_dir / CACHE_FOLDER / f"{label}.tsv"


def _sha256(path: Path) -> str:
    try:
        return fsutil.sha256_file(path)
    except OSError:
        return UNREADABLE


def _read_cache(path: Path) -> dict[str, _Entry]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if tuple(reader.fieldnames or ()) != CACHE_COLUMNS:
                return {}  # another layout: start afresh, it only costs hashing
            return {
                row["path"]: _Entry(int(row["size"]), int(row["mtime_ns"]), int(row["ctime_ns"]), row["sha256"])
                for row in reader
            }
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a missing or damaged cache only costs hashing


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` unless the file already holds it: an unchanged file keeps its mtime."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    with fsutil.atomic_open(path) as f:
        f.write(text)
    return True


def refresh_signatures(
    data_dir: Path,
    inventory: dict[str, list[Path]],
    signature_dir: Path,
    workers: int = 4,
) -> RefreshReport:
    """Bring `signature_dir/<label>.tsv` up to date for every species in `inventory`.

    `inventory` maps each label to the files found in `data_dir/<label>`
    (as `jibjib.config.check_config` returns it).  A signature file is
    rewritten only if a file was added, removed or changed content.
    """
    started = time.monotonic()
    report = RefreshReport()
    stats: dict[str, dict[str, tuple[Path, os.stat_result]]] = {}
    entries: dict[str, dict[str, _Entry]] = {}
    caches: dict[str, dict[str, _Entry]] = {}
    to_hash: list[tuple[str, str, Path, os.stat_result]] = []
    for label, files in inventory.items():
        species_dir = data_dir / label
        cache = caches[label] = _read_cache(_cache_path(signature_dir, label))
        entries[label] = {}
        stats[label] = {}
        for path in files:
            try:
                stat = path.stat()  # before hashing: a write during the hash makes the next run hash again
            except FileNotFoundError:
                continue  # removed since the folder was listed
            relative = path.relative_to(data_dir).as_posix()
            report.files += 1
            if ignore_reason(path.relative_to(species_dir)):
                entries[label][relative] = _Entry(stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, NOT_HASHED)
                continue
            cached = cache.get(relative)
            if cached is not None and cached.same_stat(stat):
                entries[label][relative] = cached
            else:
                to_hash.append((label, relative, path, stat))

    if to_hash:
        # hashlib releases the GIL while it reads and hashes, so threads scale.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            digests = pool.map(_sha256, [path for _, _, path, _ in to_hash])
            for (label, relative, _, stat), digest in zip(to_hash, digests):
                entries[label][relative] = _Entry(stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest)
                report.hashed_files += 1
                report.hashed_bytes += stat.st_size

    for label in inventory:
        ordered = sorted(entries[label].items())
        signature = fsutil.tsv_text(
            SIGNATURE_COLUMNS,
            [(path, NOT_HASHED if e.sha256 == NOT_HASHED else e.size, e.sha256) for path, e in ordered],
        )
        if _write_if_changed(signature_path(signature_dir, label), signature):
            report.changed_species.append(label)
        cacheable = {path: e for path, e in ordered if e.sha256 not in (NOT_HASHED, UNREADABLE)}
        if cacheable != caches[label]:
            _write_if_changed(
                _cache_path(signature_dir, label),
                fsutil.tsv_text(CACHE_COLUMNS, [(p, e.size, e.mtime_ns, e.ctime_ns, e.sha256) for p, e in cacheable.items()]),
            )
    report.seconds = time.monotonic() - started
    return report
