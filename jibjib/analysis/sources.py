"""Content signatures of the annotated soundscapes: what decides whether their evaluation reruns.

As for the training data and the analysed recordings (jibjib.features.inventory),
the soundscape rules depend on small signature files rewritten only when a file
was added, removed or changed content, not on the audio files themselves, whose
modification times a checkout or a copy changes:

    <signature_dir>/shard-00.tsv      the soundscape audio: path, size, content
    <signature_dir>/annotations.tsv   the annotation tables: path, sha256

Audio not hashed yet is stamped by its stat, and its analysis records the hash
(files.tsv, column sha256), which later refreshes compare with.  Annotation
tables are small text files: they are hashed on every refresh.
"""

from __future__ import annotations

from pathlib import Path

from jibjib.core import fsutil
from jibjib.features.inventory import RefreshReport, refresh_signatures
from jibjib.features.qc import species_files
from jibjib.analysis.annotations import annotation_tables

ANNOTATIONS_NAME = "annotations.tsv"


def refresh_soundscape_sources(audio_dir: Path, annotations: Path, signature_dir: Path,
                               files_table: Path) -> RefreshReport:
    """Bring the soundscape signatures in `signature_dir` up to date; `files_table`: the files.tsv of the
    soundscape analysis (its sha256 column spares hashing unchanged audio)."""
    recordings = {path.relative_to(audio_dir).as_posix(): [path] for path in species_files(audio_dir)}
    report = refresh_signatures(audio_dir, recordings, signature_dir, files_table.parent, 1,
                                manifest_path_column="file", manifest_name=files_table.name)
    base = annotations if annotations.is_dir() else annotations.parent
    text = fsutil.tsv_text(("path", "sha256"), [(table.relative_to(base).as_posix(), fsutil.sha256_file(table))
                                                for table in annotation_tables(annotations)])
    target = signature_dir / ANNOTATIONS_NAME
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        with fsutil.atomic_open(target) as f:
            f.write(text)
    return report
