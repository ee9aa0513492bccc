"""Export versions: which TF Serving version folder an export goes to, the current.json pointer, old versions.

TF Serving watches `<export>/<model>/` and serves the highest numbered
version folder in it; it loads a version once, so a model written again into
the same folder stays unseen.  With `export.version: auto` an export whose
*source digest* (what it is computed from: model, evaluation, labels, export
settings and the code that writes it) differs from the newest version's gets
the next number; the same digest keeps the newest version as it is.  With an
integer, that folder is written (replacing it).

`<export>/<model>/current.json` names the version just written or kept
(`model`, `version`, `folder`, `source_digest`, `versions`: the version
folders there).  It is the workflow's output of the export rule, the file
the analysis rules depend on, and what `--model <export>/<model>` reads
(TF Serving ignores it: it is not a number).  After an automatic export all
but the newest `export.keep_versions` version folders are removed (never the
current one); only folders that hold a jibjib export (assets/model_card.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from jibjib.core import fsutil

CURRENT_NAME = "current.json"
AUTO = "auto"
CARD = Path("assets") / "model_card.json"


def version_folders(model_folder: Path) -> dict[int, Path]:
    """The version folders (named by a positive integer) below a model's export folder, by number."""
    if not model_folder.is_dir():
        return {}
    return {int(p.name): p for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}


def source_digest(files: list[Path], settings: dict[str, Any]) -> str:
    """SHA-256 of the files an export is made from (by name and content) and its settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(f"\0{path.name}\0".encode())
        digest.update(bytes.fromhex(fsutil.sha256_file(path)))
    return digest.hexdigest()


def written_digest(folder: Path) -> str | None:
    """The source digest recorded in an export's model card (None: none, or not a jibjib export)."""
    try:
        return json.loads((folder / CARD).read_text(encoding="utf-8")).get("source_digest")
    except (OSError, ValueError, AttributeError):
        return None


def choose_version(model_folder: Path, version: int | str, digest: str) -> tuple[int, bool]:
    """(version number, whether that folder already holds this export) for `export.version`."""
    if version != AUTO:
        return int(version), False
    existing = version_folders(model_folder)
    if not existing:
        return 1, False
    newest = max(existing)
    if written_digest(existing[newest]) == digest and (existing[newest] / "saved_model.pb").is_file():
        return newest, True
    return newest + 1, False


def remove_old_versions(model_folder: Path, keep: int, current: int) -> list[int]:
    """Delete all but the newest `keep` jibjib version folders (never `current`); the numbers removed."""
    ours = sorted(n for n, path in version_folders(model_folder).items() if (path / CARD).is_file())
    removed = [n for n in ours[: max(0, len(ours) - keep)] if n != current]
    for number in removed:
        shutil.rmtree(model_folder / str(number))
    return removed


def write_current(model_folder: Path, model: str, version: int, digest: str) -> dict[str, Any]:
    """current.json: the version in use, and every version folder there (written after the folder is in place)."""
    current = {"model": model, "version": version, "folder": str(version), "source_digest": digest,
               "versions": sorted(version_folders(model_folder))}
    fsutil.write_json(model_folder / CURRENT_NAME, current)
    return current


def resolve_export(path: str | os.PathLike) -> Path:
    """The export version folder a user names: the folder itself, or a model's export folder (or its
    current.json), whose current.json names the version."""
    given = Path(path)
    pointer = given if given.name == CURRENT_NAME and given.is_file() else given / CURRENT_NAME
    if (given / "saved_model.pb").is_file() or not pointer.is_file():
        return given
    try:
        version = json.loads(pointer.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return given  # not ours: the caller reports the folder as no export
    return pointer.parent / str(version)
