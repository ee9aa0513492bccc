"""Checks of the analysis and soundscape settings, run when the Snakefile is parsed."""

from __future__ import annotations

from pathlib import Path

from jibjib.core.errors import ConfigError
from jibjib.core.settings import Settings
from jibjib.features.audio import CONTAINERS
from jibjib.features.qc import ignore_reason, species_files


def _existing_folder(key: str, value: str, demo_hint: str = "") -> Path:
    folder = Path(value)
    if not folder.exists():
        hint = f" (create the demo soundscapes with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"{key}: {folder} does not exist{hint}")
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder")
    return folder


def check_analysis(settings: Settings, demo_hint: str = "") -> dict[str, list[Path]]:
    """The analysis and soundscape settings; returns the recordings to analyse (relative path -> [file])."""
    recordings: dict[str, list[Path]] = {}
    section = settings.analyze
    if section.input_dir:
        not_trained = sorted(set(settings.analysis_models) - set(settings.models))
        if not_trained:
            raise ConfigError(f"analyze.models: {', '.join(not_trained)} not among the trained models "
                              f"({', '.join(settings.models)})")
        folder = _existing_folder("analyze.input_dir", section.input_dir, demo_hint)
        recordings = {path.relative_to(folder).as_posix(): [path] for path in species_files(folder)}
        if all(ignore_reason(Path(name)) for name in recordings):
            raise ConfigError(f"analyze.input_dir: {folder} has no audio files ({', '.join(CONTAINERS)})")
    scapes = settings.soundscapes
    if section.engine == "tflite" and not settings.export.tflite and (section.input_dir or scapes.audio_dir):
        raise ConfigError("analyze.engine: tflite runs the export's TFLite analysis file, which only "
                          "export.tflite: true writes: set it too, or use analyze.engine: savedmodel")
    if scapes.audio_dir:
        folder = _existing_folder("soundscapes.audio_dir", scapes.audio_dir, demo_hint)
        if not any(not ignore_reason(p.relative_to(folder)) for p in species_files(folder)):
            raise ConfigError(f"soundscapes.audio_dir: {folder} has no audio files ({', '.join(CONTAINERS)})")
        if scapes.annotations and not Path(scapes.annotations).exists():
            raise ConfigError(f"soundscapes.annotations: {scapes.annotations} does not exist")
    return recordings
