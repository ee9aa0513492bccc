"""The feature step: species folders in, one npz per audio file and a QC manifest out.

A Snakemake job handles a shard of whole species folders (see
jibjib.inventory) rather than one file, because per-file jobs cost tens of
milliseconds of scheduling each and every job costs a Python start.  Inside
the shard every file is still judged on its own: its npz is recomputed only
when the file's content or the front-end parameters changed.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jibjib.core import fsutil
from jibjib.core.fsutil import sha256_file
from jibjib.features.audio import AudioError, AudioInfo, open_audio, to_mono
from jibjib.core.errors import InputError
from jibjib.features.frontend import LogMelStream, hertz_to_mel, mel_to_hertz
from jibjib.features.inventory import is_sha256
from jibjib.core.params import VGGISH, FrontEnd
from jibjib.features.qc import IGNORED, PROCESSED, REJECTED, QCRow, ignore_reason, species_files, to_frame
from jibjib.features.resample import output_length

if TYPE_CHECKING:
    import pandas as pd

FEATURE_SUFFIX = ".npz"
# Digital silence: no sample reaches the quietest step of 24-bit PCM.  Not
# exactly zero, because the Opus decoder turns silence into ~1e-34.
SILENCE = 2.0**-24


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Each file allocates several short-lived multi-megabyte arrays; by default
    every one is a fresh mmap whose pages must be faulted in again, which on
    our VMs costs about as much as the arithmetic.  Harmless where it does not apply.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def read_sources(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 by data_dir-relative path from a shard's content signature
    (`results/sources/<shard>.tsv`, see jibjib.inventory); only files it hashed."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row["content"] for row in csv.DictReader(f, delimiter="\t") if is_sha256(row["content"])}


def _current_feature(
    npz: Path, source: Path, fingerprint: str, recorded_sha256: str | None = None, trust_stat: bool = True
) -> dict | None:
    """Metadata of an existing npz if it still matches its source and front end.

    With `recorded_sha256` (the hash the workflow took when it planned this
    job) the npz is current if it was computed from exactly that content: no
    stat and no hashing here.  Without it, size and mtime decide and a
    differing mtime costs a hash; with `trust_stat=False` the hash always decides.
    """
    if not npz.exists():
        return None
    try:
        with np.load(npz, allow_pickle=False) as z:
            if str(z["frontend"]) != fingerprint:
                return None
            if recorded_sha256 is not None:
                if str(z["source_sha256"]) != recorded_sha256:
                    return None
            else:
                stat = source.stat()
                if int(z["source_size"]) != stat.st_size:
                    return None
                # Content decides: a checkout that only touched mtimes costs a hash, not a recompute.
                same_stat = trust_stat and int(z["source_mtime_ns"]) == stat.st_mtime_ns
                if not same_stat and str(z["source_sha256"]) != sha256_file(source):
                    return None
            return {
                "sample_rate": int(z["sample_rate"]),
                "channels": int(z["channels"]),
                "seconds": float(z["seconds"]),
                "frames": int(z["log_mel"].shape[0]),
                "sha256": str(z["source_sha256"]),
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or from an older layout: recompute


def min_sample_rate(params: FrontEnd = VGGISH) -> float:
    """The lowest source rate whose Nyquist frequency reaches the middle of the mel range.

    Below it more than half of the mel bands can hold nothing but the log
    floor (a 1 kHz file fills 10 of the 64 VGGish bands); upsampling cannot
    invent the missing octaves, so such a file is rejected rather than trained
    on.  With the VGGish bands (125-7500 Hz) this is about 3.8 kHz, so 8 and
    11.025 kHz archive recordings still count.
    """
    middle = (hertz_to_mel(params.fmin_hz) + hertz_to_mel(params.fmax_hz)) / 2
    return 2 * float(mel_to_hertz(middle))


def check_usable(info: AudioInfo, params: FrontEnd = VGGISH) -> None:
    """What the header must allow before decoding: a rate that reaches the mel range, one full patch.

    Shared by the feature step and `jibjib predict`, so both refuse the same files.  A length
    the header only estimates (`info.exact` False) is checked once decoding has found it.
    """
    lowest_rate = min_sample_rate(params)
    if info.sample_rate < lowest_rate:
        raise AudioError("sample_rate_too_low", f"{info.sample_rate} Hz cannot carry the upper half of the "
                         f"{params.fmin_hz:g}-{params.fmax_hz:g} Hz mel range (needs {lowest_rate:.0f} Hz)")
    if info.exact and output_length(info.frames, info.sample_rate, params.sample_rate) < params.min_samples:
        need = params.min_samples / params.sample_rate
        raise AudioError("too_short", f"{info.seconds:.3f} s, one patch needs {need:.3f} s")


def extract_file(source: Path, npz: Path, params: FrontEnd = VGGISH) -> dict:
    """Compute and atomically write the features of one audio file; returns its metadata.

    The file is decoded, resampled and turned into log-mel block by block, so
    memory does not grow with its length; only the log-mel result does (1.5 MB
    per minute of audio, held about twice while it is written).  Raises
    AudioError for files that cannot be used.
    """
    with open_audio(source) as reader:
        check_usable(reader.info, params)
        stream = LogMelStream(reader.info.sample_rate, params, total=reader.info.frames if reader.info.exact else None)
        audible = False
        for block in reader.blocks():
            mono = to_mono(block)
            audible = audible or bool(mono.max(initial=0) >= SILENCE or mono.min(initial=0) <= -SILENCE)
            stream.push(mono)
        info = reader.info  # with the decoded length, where the header had only an estimate
        check_usable(info, params)
        if not audible:
            raise AudioError("silent", "all samples are zero (below 2^-24)")
        log_mel = stream.finish()
        # The hash of the bytes just decoded, not a recorded one: if the file
        # changed since the workflow hashed it, the npz says what it holds.
        stat, sha256 = reader.stat, reader.sha256()
    fsutil.save_npz(
        npz,
        log_mel=log_mel,
        sample_rate=np.int64(info.sample_rate),
        channels=np.int64(info.channels),
        seconds=np.float64(info.seconds),
        source_sha256=np.str_(sha256),
        source_size=np.int64(stat.st_size),
        source_mtime_ns=np.int64(stat.st_mtime_ns),
        frontend=np.str_(params.fingerprint()),
        frontend_params=np.str_(json.dumps(dataclasses.asdict(params), sort_keys=True)),
    )
    return {
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "seconds": info.seconds,
        "frames": int(log_mel.shape[0]),
        "sha256": sha256,
    }


def check_label(label: str) -> None:
    """A label must be one plain folder name, so that `<features_dir>/<label>` stays inside
    features_dir: `..` would also aim the stale-npz cleanup at everything around it."""
    separators = {"/", "\0", os.sep, os.altsep or "/"}
    if label in ("", ".", "..") or any(s in label for s in separators):
        raise InputError(f"species label {label!r} is not a plain folder name")


@dataclasses.dataclass
class ShardStats:
    computed: int = 0
    current: int = 0
    rejected: int = 0
    ignored: int = 0
    removed: int = 0


def extract_species(
    data_dir: Path,
    label: str,
    features_dir: Path,
    params: FrontEnd = VGGISH,
    progress_every: float = 10.0,
    sources: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, ShardStats]:
    """`update_species`, with the QC rows as a DataFrame (imports pandas)."""
    rows, stats = update_species(data_dir, label, features_dir, params, progress_every, sources)
    return to_frame(rows), stats


def update_species(
    data_dir: Path,
    label: str,
    features_dir: Path,
    params: FrontEnd = VGGISH,
    progress_every: float = 10.0,
    sources: dict[str, str] | None = None,
) -> tuple[list[QCRow], ShardStats]:
    """Bring `features_dir/<label>/` up to date with `data_dir/<label>/`.

    Returns the QC rows of every file in the species folder and the counts.
    Paths in the QC rows are relative to `data_dir`; feature paths are as given
    by `features_dir`.  `sources` (from `read_sources`) maps paths to the
    SHA-256 the workflow recorded: an npz is then current if it was computed
    from that content, and for a file missing from it (one the workflow has
    not hashed) if its hash matches the file's.  Without `sources`, size and
    mtime decide, and a differing mtime costs a hash.
    """
    check_label(label)
    keep_freed_memory()
    species_dir = data_dir / label
    out_dir = features_dir / label
    fsutil.remove_stale_temps(out_dir)
    fingerprint = params.fingerprint()
    stats = ShardStats()
    rows: list[QCRow] = []
    claimed: dict[Path, str] = {}
    files = species_files(species_dir)
    started = last_report = time.monotonic()
    for index, source in enumerate(files, 1):
        relative = source.relative_to(data_dir)
        row = QCRow(path=relative.as_posix(), label=label, status=PROCESSED)
        rows.append(row)
        reason = ignore_reason(source.relative_to(species_dir))
        if reason:
            row.status, row.reason = IGNORED, reason
            stats.ignored += 1
            continue
        npz = out_dir / source.relative_to(species_dir).with_suffix(FEATURE_SUFFIX)
        recorded = None if sources is None else sources.get(row.path)
        if npz in claimed:
            row.status, row.reason = REJECTED, "duplicate_name"
            row.detail = f"same feature file as {claimed[npz]}"
            row.sha256 = recorded or fsutil.sha256_or(source, "")
            stats.rejected += 1
            continue
        claimed[npz] = row.path
        meta = _current_feature(npz, source, fingerprint, recorded, trust_stat=sources is None)
        if meta is not None:
            stats.current += 1
        else:
            try:
                meta = extract_file(source, npz, params)
                stats.computed += 1
            except AudioError as exc:
                row.status, row.reason, row.detail = REJECTED, exc.reason, exc.detail
                # Recorded for rejected files too, so a checkout does not reschedule them (jibjib.inventory).
                row.sha256 = recorded or fsutil.sha256_or(source, "")
                stats.rejected += 1
                npz.unlink(missing_ok=True)
                continue
        row.feature = npz.as_posix()
        row.sample_rate, row.channels = meta["sample_rate"], meta["channels"]
        row.seconds, row.frames = round(meta["seconds"], 4), meta["frames"]
        row.sha256 = meta["sha256"]
        now = time.monotonic()
        if now - last_report >= progress_every:
            last_report = now
            _report(label, index, len(files), stats, now - started)
    stats.removed = _remove_orphans(out_dir, set(claimed))
    _report(label, len(files), len(files), stats, time.monotonic() - started)
    return rows, stats


def _remove_orphans(out_dir: Path, keep: set[Path]) -> int:
    """Delete npz files whose source recording is gone, so no stale feature survives."""
    removed = 0
    if out_dir.is_dir():
        for npz in out_dir.rglob(f"*{FEATURE_SUFFIX}"):
            if npz not in keep:
                npz.unlink()
                removed += 1
    return removed


def _report(label: str, done: int, total: int, stats: ShardStats, elapsed: float) -> None:
    print(
        f"features {label}: {done}/{total} files, {stats.computed} computed, "
        f"{stats.current} up to date, {stats.rejected} rejected, {stats.ignored} ignored, "
        f"{stats.removed} stale removed ({elapsed:.1f} s)",
        file=sys.stderr,
        flush=True,
    )

