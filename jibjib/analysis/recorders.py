"""Where and when a recording was made: its site, and the recorder's clock at its first sample.

A file's **site** is the first folder of its name below the analysed folder
(`north/20260501_050000.wav` is at site `north`; a file directly in the folder
has none), or, with a site pattern (`analyze.site_pattern`), the `site` group
of that regular expression searched in the name (no match: no site).

Its **start time** is the first of:

1. a time pattern (`analyze.time_pattern`): a regular expression searched in
   the name, with named groups `date` (8 digits, separators allowed:
   `20260501`, `2026-05-01`) and `time` (4 or 6 digits: `0500`, `05:00:00`),
   or `year`, `month`, `day`, `hour`, `minute` and optionally `second`;
2. the file name of an AudioMoth (`20260501_050000.WAV`) or a Song Meter
   (`<prefix>_20260501_050000.wav`, `SM4A01234_0+1_20260501_050000.wav`):
   8 digits of date, an underscore and 6 digits of time in the file name;
3. the `Timestamp` of a WAV file's GUANO metadata (Wildlife Acoustics and
   other recorders write it), read with the `guano` package.

A name whose digits are no real date or time (month 13, hour 25) gives no
time. Times are the recorder's clock as written: no time zone, unless GUANO
states one (then `recorded_at` carries its offset, `+00:00` for UTC).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import PurePosixPath

# AudioMoth and Song Meter names: a date and a time of day, underscore-joined, not inside a longer number.
RECORDER_NAME = re.compile(r"(?<!\d)(?P<date>\d{8})_(?P<time>\d{6})(?!\d)")
DATE_GROUPS, PART_GROUPS = ("date", "time"), ("year", "month", "day", "hour", "minute")


class PatternError(ValueError):
    """A site or time pattern that cannot be used: the message says why, in one line."""


def compile_site_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    compiled = _compile(pattern)
    if "site" not in compiled.groupindex:
        raise PatternError(f"{pattern!r} has no group named site, as in (?P<site>[^/]+)")
    return compiled


def compile_time_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    compiled = _compile(pattern)
    groups = set(compiled.groupindex)
    if not (set(DATE_GROUPS) <= groups or set(PART_GROUPS) <= groups):
        raise PatternError(f"{pattern!r} needs named groups date and time, or year, month, day, hour and minute "
                           "(and optionally second)")
    return compiled


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"{pattern!r} is not a valid regular expression ({exc})") from None


def _digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


def _from_date_and_time(date: str, time: str) -> dt.datetime | None:
    date, time = _digits(date), _digits(time)
    if len(date) != 8 or len(time) not in (4, 6):
        return None
    time = time.ljust(6, "0")
    try:
        return dt.datetime(int(date[:4]), int(date[4:6]), int(date[6:]), int(time[:2]), int(time[2:4]),
                           int(time[4:]))
    except ValueError:  # month 13, hour 25, ...
        return None


def _from_match(match: re.Match) -> dt.datetime | None:
    groups = match.groupdict()
    if groups.get("date") is not None and groups.get("time") is not None:
        return _from_date_and_time(groups["date"], groups["time"])
    try:
        parts = [int(_digits(groups.get(name)) or "x") for name in PART_GROUPS]
        second = int(_digits(groups.get("second")) or 0)
        return dt.datetime(*parts, second)
    except (ValueError, TypeError):
        return None


def guano_timestamp(path: str | os.PathLike) -> dt.datetime | None:
    """The GUANO `Timestamp` of a WAV file; None without one, or for a file guano cannot read."""
    if not str(path).lower().endswith(".wav"):
        return None
    try:
        import guano

        logging.getLogger("guano").setLevel(logging.ERROR)  # a bad value is ours to ignore, not to print
        value = guano.GuanoFile(str(path)).get("Timestamp")
    except Exception:  # noqa: BLE001 (wave.Error, struct.error, ValueError, OSError, ...): no metadata to use
        return None
    return value if isinstance(value, dt.datetime) else None


def checked_recorders(site_pattern: str | None, time_pattern: str | None, names: tuple[str, str]) -> "Recorders":
    """Recorders of the two patterns; a PatternError starts with the name of the pattern's setting or option
    (`names`: the site pattern's, the time pattern's), so that the caller's one line says which to fix."""
    for name, compile_pattern, pattern in ((names[0], compile_site_pattern, site_pattern),
                                           (names[1], compile_time_pattern, time_pattern)):
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            raise PatternError(f"{name}: {exc}") from None
    return Recorders(site_pattern, time_pattern)


class Recorders:
    """The site and start time of each recording, by the patterns given (None: the defaults above)."""

    def __init__(self, site_pattern: str | None = None, time_pattern: str | None = None) -> None:
        self.site_pattern = compile_site_pattern(site_pattern)
        self.time_pattern = compile_time_pattern(time_pattern)

    def site(self, relative: str) -> str:
        """The site of the file named `relative` (posix, below the analysed folder); '' for none."""
        if self.site_pattern is not None:
            match = self.site_pattern.search(relative)
            return (match.group("site") or "") if match else ""
        parts = PurePosixPath(relative).parts
        return parts[0] if len(parts) > 1 else ""

    def start(self, path: str | os.PathLike | None, relative: str) -> dt.datetime | None:
        """The recorder's clock at the file's first sample; None when neither its name nor GUANO says."""
        if self.time_pattern is not None and (match := self.time_pattern.search(relative)):
            if (found := _from_match(match)) is not None:
                return found
        for match in RECORDER_NAME.finditer(PurePosixPath(relative).name):
            if (found := _from_date_and_time(match["date"], match["time"])) is not None:
                return found
        return guano_timestamp(path) if path is not None else None


def clock(start: dt.datetime | None, offset_seconds: float) -> str:
    """ISO 8601 date-time of `offset_seconds` into a recording that started at `start` ('' when unknown)."""
    if start is None:
        return ""
    return (start + dt.timedelta(seconds=round(offset_seconds, 3))).isoformat(timespec="milliseconds")


def parse_clock(text: str) -> dt.datetime | None:
    """A `recorded_at` back as a datetime (None for '')."""
    return dt.datetime.fromisoformat(text) if text else None
