"""Which detections the review page shows: per species the best ones and a stratified random sample.

Per species (label of detections.tsv):

* **top**: its `top` highest-scoring detections (ties: the later file and
  start first, so the choice is the same on every run);
* **sample**: its score range, from its lowest to its highest detection
  score, cut into `score_bins` equal bins, and in each bin `per_bin`
  detections drawn at random among those not in the top ones. The draw
  gives each detection a pseudo-random key from the seed, its label, file
  and start (SHA-256), and keeps the smallest keys: the same seed and
  detections draw the same sample whatever their order, and a sample is
  uniform within its bin. Bins with fewer detections give all they have.

Verifying a sample across the score range, not only the best detections, is
what lets `jibjib verify` fit how precision grows with the score (Wood & Kahl
2024, J. Ornithol., guidelines for BirdNET scores).

detections.tsv is read twice (score range, then the choice), one row at a
time: memory grows with the species and the items kept, not with the
detections.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
from dataclasses import dataclass
from jibjib.analysis.combined import read_detections

TOP, SAMPLE = "top", "sample"


@dataclass(frozen=True)
class ReviewItem:
    """One detection on the review page (its fields as detections.tsv writes them)."""

    label: str
    kind: str  # top | sample
    score_bin: int  # the sample's bin (0 = lowest scores); -1 for top
    bin_low: float
    bin_high: float
    file: str
    start: str
    end: str
    score: str
    site: str
    recorded_at: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.file, self.start, self.end, self.label


def _draw_key(seed: int, row: dict[str, str]) -> int:
    digest = hashlib.sha256(f"{seed}\0{row['label']}\0{row['file']}\0{row['start']}\0{row['end']}".encode())
    return int.from_bytes(digest.digest()[:8], "big")


@dataclass(frozen=True)
class SpeciesRange:
    detections: int
    low: float
    high: float


def species_ranges(detections: str | os.PathLike) -> dict[str, SpeciesRange]:
    """Per label: how many detections, and their lowest and highest score."""
    ranges: dict[str, SpeciesRange] = {}
    for row in read_detections(detections):
        score = float(row["score"])
        known = ranges.get(row["label"], SpeciesRange(0, math.inf, -math.inf))
        ranges[row["label"]] = SpeciesRange(known.detections + 1, min(known.low, score), max(known.high, score))
    return ranges


def score_bin(score: float, low: float, high: float, bins: int) -> int:
    if high <= low:
        return 0
    return min(bins - 1, int((score - low) / (high - low) * bins))


def _fields(row: dict[str, str]) -> tuple[str, ...]:
    return row["file"], row["start"], row["end"], row["score"], row.get("site", ""), row.get("recorded_at", "")


def choose_items(detections: str | os.PathLike, top: int, score_bins: int, per_bin: int,
                 seed: int, ranges: dict[str, SpeciesRange] | None = None) -> list[ReviewItem]:
    """The items of the review page, by label, then top ones by score, then the sample by bin and score."""
    ranges = species_ranges(detections) if ranges is None else ranges
    best: dict[str, list] = {label: [] for label in ranges}  # min-heaps of (score, file, start, fields)
    drawn: dict[tuple[str, int], list] = {}  # max-heaps (negated keys) of the smallest draw keys
    keep = per_bin + top  # enough that dropping the top ones leaves per_bin
    for row in read_detections(detections):
        label, score = row["label"], float(row["score"])
        entry = (score, row["file"], float(row["start"]), _fields(row))
        if top:
            (heapq.heappush if len(best[label]) < top else heapq.heappushpop)(best[label], entry)
        if per_bin:
            where = (label, score_bin(score, ranges[label].low, ranges[label].high, score_bins))
            heap = drawn.setdefault(where, [])
            item = (-_draw_key(seed, row), _fields(row))
            (heapq.heappush if len(heap) < keep else heapq.heappushpop)(heap, item)
    items: list[ReviewItem] = []
    for label in sorted(ranges):
        low, high = ranges[label].low, ranges[label].high
        chosen = sorted(best[label], reverse=True)
        items += [ReviewItem(label, TOP, -1, low, high, *entry[3]) for entry in chosen]
        taken = {entry[3] for entry in chosen}
        width = (high - low) / score_bins
        for b in range(score_bins):
            pool = sorted((-negated, fields) for negated, fields in drawn.get((label, b), []) if fields not in taken)
            sample = sorted((fields for _, fields in pool[:per_bin]), key=lambda f: -float(f[3]))
            items += [ReviewItem(label, SAMPLE, b, low + b * width, low + (b + 1) * width if b < score_bins - 1
                                 else high, *fields) for fields in sample]
    return items

