"""Feature shards and their content signatures: what decides whether a feature job reruns.

Shards.  One Snakemake job per audio file would cost hours of scheduling on an
80,000-file corpus, and even one job per species spends a large share of the
feature stage starting Python.  So species are grouped into a fixed number of
shards (`features.shards`), each species by a stable hash of its name: adding
or removing a species reruns only its own shard, and which shard a species
lands in never depends on the other species.

Signatures.  Snakemake reruns a job when an input file is newer than its
output, and in 9.x that check cannot be switched off (`--rerun-triggers`
without `mtime` changes nothing).  A `git checkout` or a copy sets new
modification times on every recording, so with the recordings as inputs the
feature jobs, and after them labels, split and hours of training, would rerun
although nothing changed.  So a feature job's input is one small file per shard,
`<signature_dir>/<shard>.tsv`, with a row per file (path, size, content) that
is rewritten only when a file was added or removed or its content changed.

`content` is the file's SHA-256, or for a file not hashed yet a stamp of its
modification and change times (`stat:<mtime_ns>:<ctime_ns>`).  A file seen
for the first time is not hashed here: its feature job reads every byte anyway
and records the hash in its manifest (column `sha256`).  When a file's stat
changes later, it is hashed and compared with the hash recorded for it (in the
stat cache, or else in the manifest); equal content keeps the row as it was,
whatever it says, so a checkout reruns nothing.

A per-shard stat cache (`<signature_dir>/.stat-cache/<shard>.tsv`) keeps each
file's size, mtime, ctime and known hash, so a file whose stat did not change
costs no read and keeps its row from the previous signature.  The ctime is
part of the key because any write changes it, even one that restores the old
mtime (`cp -p`, `rsync -t`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jibjib.core import fsutil
from jibjib.features.qc import ignore_reason

SIGNATURE_COLUMNS = ("path", "size", "content")
CACHE_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "sha256")
CACHE_FOLDER = ".stat-cache"
# Ignored files (hidden, not audio) reach only the QC table, where their content
# does not matter: they are listed, not hashed.
NOT_HASHED = "-"
# A file we could not read when we had to hash it: its shard reruns, and the
# feature step rejects it with a reason; never cached, so it is hashed again.
UNREADABLE = "unreadable"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(content: str) -> bool:
    return bool(_SHA256.fullmatch(content))


def shard_of(label: str, shards: int) -> str:
    """The shard of a species: `shard-<n>`, n from a CRC-32 of the name (stable across
    runs, machines and Python versions, unlike `hash()`), zero-padded to sort."""
    width = max(2, len(str(shards - 1)))
    return f"shard-{zlib.crc32(label.encode('utf-8')) % shards:0{width}d}"


def shard_species(labels: list[str], shards: int) -> dict[str, list[str]]:
    """Shard name -> its species, sorted; shards without species are left out."""
    grouped: dict[str, list[str]] = {}
    for label in sorted(labels):
        grouped.setdefault(shard_of(label, shards), []).append(label)
    return dict(sorted(grouped.items()))


@dataclasses.dataclass(frozen=True)
class _Entry:
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str  # '' while the file has not been hashed here

    @classmethod
    def of(cls, stat: os.stat_result, sha256: str = "") -> "_Entry":
        return cls(*fsutil.stat_key(stat), sha256)

    def same_stat(self, stat: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns) == fsutil.stat_key(stat)


@dataclasses.dataclass
class RefreshReport:
    files: int = 0
    new_files: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    changed_shards: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """What the refresh did, for people ('' if it neither listed new files nor hashed)."""
        done = []
        if self.new_files:
            done.append(f"{self.new_files} files new or changed, to be hashed by their feature jobs")
        if self.hashed_files:
            done.append(f"hashed {self.hashed_files} of {self.files} files "
                        f"({self.hashed_bytes / 1e6:.0f} MB) in {self.seconds:.1f} s")
        return "; ".join(done)


def signature_path(signature_dir: Path, shard: str) -> Path:
    return signature_dir / f"{shard}.tsv"


def _cache_path(signature_dir: Path, shard: str) -> Path:
    return signature_dir / CACHE_FOLDER / f"{shard}.tsv"


def _read_table(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a TSV with exactly these leading columns; [] if missing, damaged or of another layout."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if tuple(reader.fieldnames or ())[: len(columns)] != columns:
                return []
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _read_cache(path: Path) -> dict[str, _Entry]:
    try:
        return {
            row["path"]: _Entry(int(row["size"]), int(row["mtime_ns"]), int(row["ctime_ns"]), row["sha256"])
            for row in _read_table(path, CACHE_COLUMNS)
        }
    except (ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs hashing


def _column(path: Path, column: str, key: str = "path") -> dict[str, str]:
    """`column` by path from a TSV whose first column `key` holds the path ({} if there is none)."""
    return {row[key]: row.get(column) or "" for row in _read_table(path, (key,))}


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
    manifest_dir: Path,
    shards: int,
    workers: int = 4,
    manifest_path_column: str = "path",
    manifest_name: str = "{shard}.tsv",
) -> RefreshReport:
    """Bring `signature_dir/<shard>.tsv` up to date for every shard of the species in `inventory`.

    `inventory` maps each group (a species label, whose files are found in
    `data_dir/<label>` as `jibjib.config.check_config` returns them, or for the
    analysis stage a file's relative path) to its files, and groups are sharded
    by name; `manifest_dir/<shard>.tsv` are
    the jobs' manifests (`manifest_dir/<manifest_name>`), which record the hashes they took (in column
    `sha256`, by the path in column `manifest_path_column`).  A
    signature file is rewritten only if a file was added or removed or its
    content changed.
    """
    started = time.monotonic()
    report = RefreshReport()
    rows: dict[str, dict[str, tuple[object, str]]] = {}  # shard -> path -> (size, content)
    caches: dict[str, dict[str, _Entry]] = {}
    new_caches: dict[str, dict[str, _Entry]] = {}
    to_hash: list[tuple[str, str, Path, os.stat_result, str, str]] = []
    for shard, labels in shard_species(list(inventory), shards).items():
        previous = _column(signature_path(signature_dir, shard), "content")
        cache = caches[shard] = _read_cache(_cache_path(signature_dir, shard))
        recorded: dict[str, str] | None = None
        rows[shard], new_caches[shard] = {}, {}
        for label in labels:
            for path in inventory[label]:
                relative = path.relative_to(data_dir).as_posix()
                try:
                    stat = path.stat()  # before hashing: a write during the hash makes the next run hash again
                except FileNotFoundError:
                    if path.is_symlink():  # a link whose target is missing: its job reports it unreadable
                        report.files += 1
                        rows[shard][relative] = (0, UNREADABLE)
                    continue  # else removed since the folder was listed
                report.files += 1
                if ignore_reason(Path(relative)):
                    rows[shard][relative] = (NOT_HASHED, NOT_HASHED)
                    continue
                before, cached = previous.get(relative), cache.get(relative)
                if before and cached is not None and cached.same_stat(stat):
                    rows[shard][relative] = (stat.st_size, before)
                    new_caches[shard][relative] = cached
                    continue
                known = cached.sha256 if cached is not None else ""
                if before and not known:
                    if recorded is None:
                        recorded = _column(manifest_dir / manifest_name.format(shard=shard), "sha256",
                                           manifest_path_column)
                    known = recorded.get(relative, "")
                if before and known:
                    to_hash.append((shard, relative, path, stat, known, before))
                else:
                    # New, or changed with no hash to compare: a stamp, and the feature job hashes it.
                    report.new_files += 1
                    rows[shard][relative] = (stat.st_size, f"stat:{stat.st_mtime_ns}:{stat.st_ctime_ns}")
                    new_caches[shard][relative] = _Entry.of(stat)

    _hash_pending(to_hash, rows, new_caches, report, workers)
    _write_signatures(rows, new_caches, caches, signature_dir, report)
    _forget_other_shards(set(rows), signature_dir, manifest_dir)
    report.seconds = time.monotonic() - started
    return report


def _hash_pending(to_hash: list[tuple[str, str, Path, os.stat_result, str, str]],
                  rows: dict[str, dict[str, tuple[object, str]]], new_caches: dict[str, dict[str, _Entry]],
                  report: RefreshReport, workers: int) -> None:
    """Hash the files whose stat changed and set their rows: the old content where the hash is the same."""
    if not to_hash:
        return
    # hashlib releases the GIL while it reads and hashes, so threads scale.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        paths = [path for _, _, path, _, _, _ in to_hash]
        digests = pool.map(fsutil.sha256_or, paths, [UNREADABLE] * len(paths))
        for (shard, relative, _, stat, known, before), digest in zip(to_hash, digests):
            # Same content keeps the row as it was, even a stamp: nothing downstream is stale.
            same = digest == known and before != UNREADABLE
            rows[shard][relative] = (stat.st_size, before if same else digest)
            if digest != UNREADABLE:
                new_caches[shard][relative] = _Entry.of(stat, digest)
            report.hashed_files += 1
            report.hashed_bytes += stat.st_size


def _write_signatures(rows: dict[str, dict[str, tuple[object, str]]], new_caches: dict[str, dict[str, _Entry]],
                      caches: dict[str, dict[str, _Entry]], signature_dir: Path, report: RefreshReport) -> None:
    """Each shard's signature and stat cache, rewritten only where they changed."""
    for shard, shard_rows in rows.items():
        text = fsutil.tsv_text(SIGNATURE_COLUMNS, [(path, *row) for path, row in sorted(shard_rows.items())])
        if _write_if_changed(signature_path(signature_dir, shard), text):
            report.changed_shards.append(shard)
        if new_caches[shard] != caches[shard]:
            _write_if_changed(
                _cache_path(signature_dir, shard),
                fsutil.tsv_text(CACHE_COLUMNS, [(p, e.size, e.mtime_ns, e.ctime_ns, e.sha256)
                                                for p, e in sorted(new_caches[shard].items())]),
            )


def _forget_other_shards(shards: set[str], signature_dir: Path, manifest_dir: Path) -> None:
    """Delete signatures, caches and manifests (and the files named after them) of shards that hold no species now.

    After `features.shards` changed and changed back, or a shard's only species
    was removed and added again, an old manifest whose signature still matched
    would otherwise be taken as current although its npz files were rewritten
    in between.
    """
    for folder in (signature_dir, signature_dir / CACHE_FOLDER, manifest_dir):
        for path in folder.glob("shard-*.tsv"):
            # shard-NN.tsv, and files beside a manifest named after its shard (shard-NN.detections.tsv)
            if path.name.split(".", 1)[0] not in shards:
                path.unlink(missing_ok=True)
