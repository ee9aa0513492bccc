"""What the Snakefile asks of the package when it is parsed: the typed settings and every config check.

One place that knows every stage's checks, so a bad configuration costs one
clear line before any job starts (the stages themselves never import this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from jibjib.core.settings import Settings


def check_config(config: Mapping[str, Any], demo_hint: str = "") -> tuple[Settings, dict[str, list[Path]]]:
    """The typed settings and the species inventory (folder -> files), after every check of the config.

    A file or folder the checks cannot read (an unreadable data_dir or
    label_map, say) is a ConfigError naming it, like every other problem.
    """
    from jibjib.core.errors import ConfigError
    from jibjib.labels.checks import check_data_dir, check_label_map, check_multi_species, check_split, \
        inventory_species
    from jibjib.models.checkpoint import check_checkpoint

    settings = Settings.from_config(config)
    background = settings.labels.background
    try:
        inventory = check_data_dir(Path(settings.data_dir), background, demo_hint)
        check_multi_species(settings, sorted(inventory))
        check_split(settings.split)
        check_label_map(settings.label_map, inventory_species(sorted(inventory), background))
        if "vggish" in settings.models:
            check_checkpoint(settings.vggish.checkpoint)
    except OSError as exc:
        if exc.filename is None:
            raise
        raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
    return settings, inventory

