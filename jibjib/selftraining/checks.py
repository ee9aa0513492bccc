"""The self_training settings at parse time: one line on what is wrong, before any job runs."""

from __future__ import annotations

from pathlib import Path

from jibjib.core.errors import ConfigError
from jibjib.core.settings import Settings
from jibjib.features.audio import CONTAINERS
from jibjib.selftraining.unlabelled import unlabelled_files


def check_self_training(settings: Settings, demo_hint: str = "") -> None:
    """self_training.audio_dir must be a folder with audio when a trained model self-trains."""
    section = settings.self_training
    if not section.enabled:
        return
    left_out = sorted(set(section.models) - set(settings.models))
    if not settings.self_training_models:
        raise ConfigError(f"self_training.models: {', '.join(left_out)} not among the trained models "
                          f"({', '.join(settings.models)})")
    folder = Path(section.audio_dir)
    if not folder.exists():
        hint = f" (create the demo field audio with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"self_training.audio_dir: {folder} does not exist{hint}")
    if not folder.is_dir():
        raise ConfigError(f"self_training.audio_dir: {folder} is not a folder")
    if not unlabelled_files(folder):
        raise ConfigError(f"self_training.audio_dir: {folder} has no audio files ({', '.join(CONTAINERS)})")
    if settings.train.nodes * settings.train.tasks_per_node > 1:
        # The student takes the pseudo-labelled windows in one process (they are not in a worker's share of
        # the packs): say so before the teacher trains, not after.
        raise ConfigError(f"self_training: a student trains in one process, not with train.nodes x "
                          f"train.tasks_per_node = {settings.train.nodes * settings.train.tasks_per_node} tasks; "
                          "set self_training.audio_dir: null or one task")
