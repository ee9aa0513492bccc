"""The split ledger (split_ledger.tsv): the split each recording got, kept from run to run.

Adding files must not move a recording that already has a split, which no pure
function of the file list could promise; `assign_splits` keeps the splits the
ledger gives, as long as they were made under the same split settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from jibjib.core import fsutil
from jibjib.labels.index import DEFAULT_RECORDING_PATTERN
from jibjib.labels.split import SPLITS

LEDGER_COLUMNS = ["recording_id", "split", "settings"]


def split_settings(fractions: dict[str, float], seed: int, min_eval_recordings: int,
                   recording_pattern: str = DEFAULT_RECORDING_PATTERN) -> str:
    """The ledger's `settings` value: assignments made under other settings are not reused."""
    text = json.dumps({"fractions": {name: float(fractions[name]) for name in SPLITS}, "seed": seed,
                       "min_eval_recordings": min_eval_recordings, "recording_pattern": recording_pattern},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_ledger(path: str | Path, settings: str) -> tuple[dict[str, str], str]:
    """The splits an earlier run gave to recordings (if made under `settings`), and a line for the log."""
    path = Path(path)
    if not path.exists():
        return {}, f"no ledger {path} yet: split from scratch"
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return {}, f"warning: ledger {path} ignored, unreadable ({exc}): split from scratch"
    if list(table.columns) != LEDGER_COLUMNS or not table["split"].isin(SPLITS).all():
        return {}, (f"warning: ledger {path} ignored, not a ledger (columns {', '.join(LEDGER_COLUMNS)}): "
                    "split from scratch")
    if (table["settings"] != settings).any():
        return {}, (f"ledger {path} ignored: written under other split settings (seed, fractions, "
                    "min_eval_recordings or recording_pattern); split from scratch")
    return dict(zip(table["recording_id"], table["split"])), f"ledger {path}: reused for {len(table)} recordings"


def write_ledger(path: str | Path, split: pd.DataFrame, settings: str) -> None:
    """Every current recording's split, for the next run to keep (recordings gone since are forgotten)."""
    table = split[["recording_id", "split"]].drop_duplicates().sort_values("recording_id", kind="stable")
    fsutil.write_tsv(path, table.assign(settings=settings)[LEDGER_COLUMNS])
