"""What benchmarks/analyze.py measures: the 1-hour soundscape, and the exports with each engine's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 48000  # what field recorders and BirdNET use
PIECE_SECONDS = 300.0  # the soundscape is rendered in pieces: a 1-hour mix in one go would take ~5 GB
N_SPECIES = 8  # as `make demo`


def soundscape(workdir: Path, minutes: int) -> tuple[Path, int]:
    """(path, number of songs) of a `minutes`-long 48 kHz soundscape, written unless already there."""
    from jibjib.demo import soundscapes as ds

    path = workdir / f"soundscape-{minutes}min-{RATE // 1000}k-v{ds.GENERATOR_VERSION}.wav"
    count_path = path.with_suffix(".songs")
    if path.is_file() and count_path.is_file():
        return path, int(count_path.read_text())
    from jibjib.demo.songs import make_species, species_names
    from jibjib.demo.species import DEFAULT_SEED

    names = species_names(DEFAULT_SEED, N_SPECIES)
    species = [make_species(DEFAULT_SEED, i, name) for i, name in enumerate(names)]
    # make_soundscapes ties each file's rate to its place in FORMATS and renders
    # a file in one piece, so the pieces are planned here: plans at the places
    # of the 48 kHz format, each with its own random streams, back to back.
    first = next(i for i, fmt in enumerate(ds.FORMATS) if fmt[3] == RATE)
    total = minutes * 60.0
    lengths = [PIECE_SECONDS] * int(total // PIECE_SECONDS) + ([total % PIECE_SECONDS] if total % PIECE_SECONDS else [])
    songs = 0
    partial = path.with_suffix(".partial.wav")
    workdir.mkdir(parents=True, exist_ok=True)
    import soundfile

    with soundfile.SoundFile(str(partial), "w", RATE, 1, subtype="PCM_16", format="WAV") as out:
        for k, seconds in enumerate(lengths):
            plan = ds._plan_file(DEFAULT_SEED, first + k * len(ds.FORMATS), species, seconds)
            songs += len(plan.calls)
            out.write(np.round(ds._render(DEFAULT_SEED, plan) * 32767.0).astype(np.int16))
    # Renamed only when complete, so an interrupted run is never taken for the cache.
    os.replace(partial, path)
    count_path.write_text(str(songs))
    return path, songs


def default_models() -> list[Path]:
    """results/export/<model>/<highest version> for every model exported."""
    found = []
    for model in sorted(Path(REPO / "results" / "export").glob("*")):
        versions = [v for v in model.iterdir() if v.is_dir() and v.name.isdigit()] if model.is_dir() else []
        if versions:
            found.append(max(versions, key=lambda v: int(v.name)))
    return found


def model_name(export: Path) -> str:
    return f"{export.parent.name}/{export.name}"


def has_tflite(export: Path) -> bool:
    card = json.loads((export / "assets" / "model_card.json").read_text())
    return bool(card.get("tflite", {}).get("analysis"))


def with_tflite(export: Path, workdir: Path) -> Path | None:
    """`export` if it has the analysis TFLite files; else the same trained model exported again with them
    (`jibjib export --tflite`, from the results/ folder the export is in, cached in workdir by the export's
    digest), or None when the trained model is not there."""
    if has_tflite(export):
        return export
    from jibjib.analysis.analyzer import export_digest

    from jibjib.serving.publish import resolve_export

    results, model = export.parents[2], export.parent.name
    # `jibjib export --out` is the model's folder: it writes a version folder and current.json in it.
    out = workdir / "exports" / f"{model}-{export_digest(export)[:16]}"
    if (out / "current.json").is_file():
        return resolve_export(out)
    inputs = [results / "models" / model / "model.keras", results / "eval" / model / "metrics.json",
              results / "labels.tsv", results / "split.tsv", results / "features"]
    if not all(path.exists() for path in inputs):
        return None
    card = json.loads((export / "assets" / "model_card.json").read_text())
    frontend = json.dumps({k: v for k, v in card["frontend"].items() if k != "fingerprint"})
    print(f"exporting {model_name(export)} again with its TFLite files ({out}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "jibjib", "export", "--model-dir", str(results / "models" / model),
                    "--eval-dir", str(results / "eval" / model), "--labels", str(results / "labels.tsv"),
                    "--split", str(results / "split.tsv"), "--features-dir", str(results / "features"),
                    "--frontend", frontend, "--tflite", "--out", str(out)],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return resolve_export(out)


def engine_exports(export: Path, wanted: list[str], workdir: Path) -> list[tuple[str, Path]]:
    """(engine, export folder) for each engine of `wanted` the model can run."""
    found = [("savedmodel", export)] if "savedmodel" in wanted else []
    if "tflite" in wanted:
        tflite = with_tflite(export, workdir)
        if tflite is None:
            print(f"{model_name(export)}: no tflite line: no TFLite files, and no trained model beside the export"
                  " to export them from")
        else:
            found.append(("tflite", tflite))
    return found


def engine_name(export: Path, engine: str) -> str:
    if engine == "savedmodel":
        return "savedmodel"
    return json.loads((export / "assets" / "model_card.json").read_text())["tflite"]["analysis"]["file"]
