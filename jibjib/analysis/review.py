"""`jibjib review`: a static page to verify an analysis' detections in the browser.

From an analysis folder (detections.tsv, files.tsv), the page in `out`:

    index.html              the page (jibjib.analysis.review_page): open it from the file system
    clips/NNNN.wav          each item's clip (jibjib.analysis.review_media)
    spectrograms/NNNN.png   each item's spectrogram
    items.tsv               the items shown: id, label, kind, score_bin, bin_low, bin_high, file, start, end,
                            score, site, recorded_at, clip, spectrogram, note
    .jibjib-review          marks the folder as a page jibjib wrote

The items are jibjib.analysis.review_sample's: per species `top` detections
and `per_bin` from each of `score_bins` bins, so a page holds at most
species x (top + score_bins x per_bin) clips of a few seconds each. The page
is built in a hidden folder beside and moved into place when complete; a
folder that holds other files than a page jibjib wrote is refused before any
work. A recording that cannot be read gives its items a note instead of a clip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.analysis import tables
from jibjib.analysis.review_media import read_clip, write_spectrogram, write_wav
from jibjib.analysis.review_page import PageData, page_html
from jibjib.analysis.review_sample import ReviewItem, choose_items, species_ranges

MARKER = ".jibjib-review"
PAGE_FILES = ("index.html", "items.tsv", "clips", "spectrograms", MARKER)
ITEM_COLUMNS = ("id", "label", "kind", "score_bin", "bin_low", "bin_high", "file", "start", "end", "score", "site",
                "recorded_at", "clip", "spectrogram", "note")


def check_out_dir(out: Path) -> None:
    """InputError unless `out` is missing, empty, or a review page jibjib wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out: {out} is a file, not a folder")
    if (out / MARKER).is_file() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir())
    raise InputError(f"--out: {out} holds files that are not a review page jibjib wrote ({', '.join(others[:3])}"
                     f"{' ...' if len(others) > 3 else ''}): choose an empty or new folder")


def recording_paths(analysis: Path, audio: Path | None) -> dict[str, Path]:
    """Name in the tables -> the recording: `audio`/name if given, else files.tsv's path."""
    rows = tables.read_files_table(analysis / "files.tsv")
    if audio is not None:
        return {row["file"]: audio / row["file"] for row in rows}
    missing = [row["file"] for row in rows if not row.get("path") and row["status"] in ("analysed", "reused")]
    if missing:
        raise InputError(f"{analysis / 'files.tsv'} does not say where {missing[0]} is (written before files.tsv "
                         "had a path column): give --audio, the folder that was analysed")
    return {row["file"]: Path(row["path"]) for row in rows if row.get("path")}


def _media(item: ReviewItem, number: str, path: Path | None, build: Path) -> dict[str, object]:
    """Write an item's clip and spectrogram into `build`; the page's fields for them."""
    fields: dict[str, object] = {"clip": "", "image": "", "note": "", "clip_start": ""}
    if path is None:
        fields["note"] = "recording not listed in files.tsv"
        return fields
    try:
        clip = read_clip(path, float(item.start), float(item.end))
    except (OSError, RuntimeError, ValueError) as exc:  # soundfile raises RuntimeError (LibsndfileError)
        fields["note"] = f"clip unavailable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return fields
    if clip.samples.size == 0:
        fields["note"] = "clip unavailable: no audio at this time"
        return fields
    write_wav(build / "clips" / f"{number}.wav", clip)
    write_spectrogram(build / "spectrograms" / f"{number}.png", clip)
    return {**fields, "clip": f"clips/{number}.wav", "image": f"spectrograms/{number}.png",
            "clip_start": f"{clip.start:.3f}"}


def _move_into_place(build: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a review page written by jibjib review\n", encoding="utf-8")
    for name in ("clips", "spectrograms"):
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
        os.replace(build / name, out / name)
    for name in ("items.tsv", "index.html"):  # the page last: a reader never sees it before its files
        os.replace(build / name, out / name)
    shutil.rmtree(build, ignore_errors=True)


def write_review(analysis: Path, out: Path, top: int, score_bins: int, per_bin: int, seed: int,
                 audio: Path | None = None, title: str | None = None) -> list[dict[str, object]]:
    """The review page of the analysis in `analysis`, in `out`; returns its items."""
    check_out_dir(out)
    detections = analysis / "detections.tsv"
    paths = recording_paths(analysis, audio)
    ranges = species_ranges(detections)
    chosen = choose_items(detections, top, score_bins, per_bin, seed, ranges)
    build = out.parent / f".{out.name}{fsutil.TMP_MARK}{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    (build / "clips").mkdir(parents=True)
    (build / "spectrograms").mkdir()
    try:
        items = []
        for index, item in enumerate(chosen, 1):
            number = f"{index:04d}"
            items.append({"id": number, **asdict(item), **_media(item, number, paths.get(item.file), build)})
        settings = {"top": top, "score_bins": score_bins, "per_bin": per_bin, "seed": seed}
        species = [{"label": label, "detections": r.detections, "low": r.low, "high": r.high}
                   for label, r in sorted(ranges.items())]
        data = PageData(title or f"Review: {analysis.resolve().name}", items, species, settings)
        (build / "index.html").write_text(page_html(data), encoding="utf-8")
        rows = [[item["image"] if c == "spectrogram" else item.get(c, "") for c in ITEM_COLUMNS] for item in items]
        (build / "items.tsv").write_text(fsutil.tsv_text(ITEM_COLUMNS, rows), encoding="utf-8")
        _move_into_place(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return items
