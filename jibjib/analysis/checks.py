"""Checks of the analysis and soundscape settings, run when the Snakefile is parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from jibjib.core.errors import ConfigError, InputError
from jibjib.core.settings import AnalyzeSettings, Settings
from jibjib.features.audio import CONTAINERS
from jibjib.features.qc import ignore_reason, species_files
from jibjib.labels.checks import inventory_species
from jibjib.analysis.recorders import PatternError, Recorders, checked_recorders
from jibjib.analysis.species_lists import SpeciesLists


def _existing_folder(key: str, value: str, demo_hint: str = "") -> Path:
    folder = Path(value)
    if not folder.exists():
        hint = f" (create the demo soundscapes with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"{key}: {folder} does not exist{hint}")
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder")
    return folder


def _check_recorders(section: AnalyzeSettings) -> Recorders:
    try:
        return checked_recorders(section.site_pattern, section.time_pattern,
                                 ("analyze.site_pattern", "analyze.time_pattern"))
    except PatternError as exc:
        raise ConfigError(str(exc)) from None


def _check_species_lists(section: AnalyzeSettings, recorders: Recorders, recordings: Iterable[str],
                         labels: list[str]) -> None:
    """The lists against the classes the data folders name (the model's labels are checked again by analyze),
    and, with a folder of lists, every site analysed has one."""
    if not Path(section.species_lists).exists():
        raise ConfigError(f"analyze.species_lists: {section.species_lists} does not exist")
    try:
        lists = SpeciesLists(section.species_lists, labels)
        lists.check_sites((recorders.site(name), name) for name in recordings if not ignore_reason(Path(name)))
    except InputError as exc:
        message = str(exc).removeprefix("--species-list: ").replace("a label of the model", "a species of data_dir")
        raise ConfigError(f"analyze.species_lists: {message}") from None


def _check_verifications(settings: Settings) -> None:
    path = settings.analyze.verifications
    models = settings.analysis_models
    if len(models) > 1 and "{model}" not in path:
        raise ConfigError(f"analyze.verifications: {path} would serve {len(models)} models ({', '.join(models)}): "
                          "write {model} in the path, one file per model")
    for model in models:
        if not Path(path.replace("{model}", model)).is_file():
            raise ConfigError(f"analyze.verifications: {path.replace('{model}', model)} does not exist")


def check_analysis(settings: Settings, demo_hint: str = "", folders: Iterable[str] = ()) -> dict[str, list[Path]]:
    """The analysis and soundscape settings; returns the recordings to analyse (relative path -> [file]).

    `folders`: the data folders (their species are the classes a species list may name)."""
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
        recorders = _check_recorders(section)
        if section.species_lists:
            _check_species_lists(section, recorders, recordings,
                                 inventory_species(sorted(folders), settings.labels.background))
        if section.verifications:
            _check_verifications(settings)
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
