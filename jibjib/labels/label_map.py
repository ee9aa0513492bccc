"""The safe reader of the old `bird_id_map.pickle`, which links each species to the app database's id."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from jibjib.core.errors import LabelError


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        raise pickle.UnpicklingError(f"the pickle asks for {module}.{name}, only plain data is accepted")


def load_label_map(path: str | Path) -> dict[str, int]:
    """Read the old `bird_id_map.pickle` (species -> database id) without running pickle code.

    Only the built-in data opcodes are allowed, so a pickle that tries to import
    or call anything is refused before it can act.
    """
    path = Path(path)
    try:
        data = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path} refused: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise LabelError(f"{path} must be a dict of species name -> integer id")
    return data
