"""Species lists: which species `jibjib analyze` reports, for every recording or per site.

A list is a text file with one label a line, as the model names it (its
`labels.txt`); blank lines and lines starting with `#` are skipped, spaces
around a name are stripped. `--species-list` (`analyze.species_lists`) names
either one list for every recording, or a folder of lists, one per site,
`<site>.txt` (jibjib.analysis.recorders says what a site is). Only the listed
species are reported: the others are still scored (score files keep every
species), but never detected.

Every name is checked against the model's labels, and with a folder every
site analysed must have its list, before any audio is read: a name that is
not a label, or a site without a list, stops the run with one line naming it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable

from jibjib.core.errors import InputError

LIST_SUFFIX = ".txt"


def read_species_list(path: Path) -> list[tuple[int, str]]:
    """(line number, name) of every name in a list file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file of species names (UTF-8)") from None
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if name and not name.startswith("#"):
            names.append((number, name))
    return names


def _unknown(path: Path, number: int, name: str, labels: list[str]) -> InputError:
    close = difflib.get_close_matches(name, labels, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"{path}:{number}: {name!r} is not a label of the model{hint}")


class SpeciesLists:
    """The species each recording may report, read and checked against the model's `labels`.

    `source`: None (every species everywhere), a list file, or a folder of `<site>.txt` lists.
    """

    def __init__(self, source: str | os.PathLike | None, labels: list[str]) -> None:
        self.source = Path(source) if source is not None else None
        self.per_site = self.source is not None and self.source.is_dir()
        self._lists: dict[str, frozenset[str]] = {}
        if self.source is None:
            return
        if not self.source.exists():
            raise InputError(f"--species-list: {self.source} does not exist")
        files = sorted(self.source.glob(f"*{LIST_SUFFIX}")) if self.per_site else [self.source]
        if self.per_site and not files:
            raise InputError(f"--species-list: {self.source} holds no species lists (<site>{LIST_SUFFIX})")
        known = set(labels)
        for path in files:
            names = read_species_list(path)
            for number, name in names:
                if name not in known:
                    raise _unknown(path, number, name, labels)
            self._lists[path.stem if self.per_site else ""] = frozenset(name for _, name in names)

    def check_sites(self, sites: Iterable[tuple[str, str]]) -> None:
        """InputError naming the first (site, file) whose site has no list, with per-site lists."""
        if not self.per_site:
            return
        for site, file in sites:
            if site not in self._lists:
                where = f"site {site!r} (of {file})" if site else f"{file}, which is in no site folder,"
                raise InputError(f"--species-list: no list for {where}: expected "
                                 f"{self.source / ((site or '<site>') + LIST_SUFFIX)}")

    def allowed(self, site: str) -> frozenset[str] | None:
        """The species a recording at `site` may report (None: all)."""
        if self.source is None:
            return None
        return self._lists.get(site if self.per_site else "", frozenset())
