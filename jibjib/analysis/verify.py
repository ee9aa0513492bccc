"""`jibjib verify`: from verified detections to each species' precision and a threshold for a target precision.

Input: a verifications CSV (the review page's `verifications.csv`): columns
`file, start, end, label, score, verdict`, verdict `yes` (the species is
there), `no` or `unsure`; other columns are ignored, each row counts.

`verification.tsv`, one row per species verified, sorted by label:

* `n_verified` (yes and no verdicts), `n_yes`, `n_no`, `n_unsure` (counted,
  left out of everything else);
* `precision` = n_yes / n_verified: the precision of the detections at the
  threshold they were made at, as far as the verified ones tell, with its
  Wilson 95 % interval `precision_low`, `precision_high` (the evaluation's,
  jibjib.evaluation.thresholds.precision_interval);
* `target_precision`, and `threshold_for_target`: the score at which a
  logistic fit of the verdict (yes 1, no 0) on the logit of the score reaches
  the target, P(yes | s) = 1 / (1 + exp(-(a + b logit(s)))), so
  s = expit((logit(target) - a) / b) (Wood & Kahl 2024, J. Ornithol., fit on
  the logit as BirdNET's guidelines do: scores crowd near 1). `fit_intercept`
  (a) and `fit_slope` (b) give the curve (maximum likelihood, scikit-learn's
  LogisticRegression without a penalty).
* `reason`: why `threshold_for_target` is empty: fewer than MIN_VERDICTS yes
  and no verdicts, only one kind of verdict, verdicts that score perfectly
  apart (no finite fit), a slope that does not rise, or a target the fit
  reaches only outside the verified scores (no extrapolation);
* `figure`: the species' figure in `figures/` (verdicts against score, the
  fitted curve, the target and the threshold).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.evaluation.thresholds import precision_interval

VERIFICATION_COLUMNS = ("file", "start", "end", "label", "score", "verdict")
VERDICTS = ("yes", "no", "unsure")
RESULT_COLUMNS = ("label", "n_verified", "n_yes", "n_no", "n_unsure", "precision", "precision_low", "precision_high",
                  "target_precision", "threshold_for_target", "fit_intercept", "fit_slope", "reason", "figure")
MIN_VERDICTS = 10
SCORE_EPSILON = 1e-6  # logit of a score of exactly 0 or 1


def read_verifications(path: str | os.PathLike, labels: set[str] | None = None,
                       labels_of: str = "the analysis") -> pd.DataFrame:
    """The checked verifications (label, score as float, verdict lower-case); InputError naming the first
    problem: a missing column, a score that is no number in [0, 1], a verdict outside yes/no/unsure, or a
    label not among `labels`."""
    try:
        # utf-8-sig: a spreadsheet program that saved the file may have put a byte-order mark before `file`.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "empty"
        raise InputError(f"{path}: not a CSV of verifications ({first})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in VERIFICATION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (expected {', '.join(VERIFICATION_COLUMNS)})")
    if table.empty:
        raise InputError(f"{path}: no verifications (the header alone)")
    table["verdict"] = table["verdict"].str.strip().str.lower()
    table["label"] = table["label"].str.strip()
    scores = pd.to_numeric(table["score"].str.strip(), errors="coerce")
    for row, (label, score, text, verdict) in enumerate(zip(table["label"], scores, table["score"],
                                                            table["verdict"]), 2):
        if verdict not in VERDICTS:
            raise InputError(f"{path}: line {row}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not 0.0 <= score <= 1.0:  # NaN fails too
            raise InputError(f"{path}: line {row}: score {text!r} is not a number between 0 and 1")
        if labels is not None and label not in labels:
            raise InputError(f"{path}: line {row}: label {label!r} is not a label of {labels_of}")
    table["score"] = scores.astype(float)
    return table


def _logit(score: np.ndarray) -> np.ndarray:
    clipped = np.clip(score, SCORE_EPSILON, 1 - SCORE_EPSILON)
    return np.log(clipped / (1 - clipped))


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class Fit:
    """The logistic curve on logit(score), or None and why not, and the threshold it gives."""

    intercept: float | None
    slope: float | None
    threshold: float | None
    reason: str


def fit_threshold(scores: np.ndarray, yes: np.ndarray, target: float) -> Fit:
    """The score at which P(yes | score), fitted on the yes/no verdicts, reaches `target` (see the module)."""
    n_yes, n = int(yes.sum()), int(yes.size)
    if n < MIN_VERDICTS:
        return Fit(None, None, None, f"{n} yes/no verdicts: the fit needs at least {MIN_VERDICTS}")
    if n_yes in (0, n):
        return Fit(None, None, None, f"only {'yes' if n_yes else 'no'} verdicts: no curve to fit")
    highest_no, lowest_yes = scores[~yes].max(), scores[yes].min()
    if highest_no < lowest_yes:
        return Fit(None, None, None, f"every no scores below every yes ({highest_no:.4f} < {lowest_yes:.4f}): "
                                     "no finite fit; a threshold between them keeps every verified yes")
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(_logit(scores)[:, None], yes.astype(int))
    a, b = float(model.intercept_[0]), float(model.coef_[0, 0])
    if b <= 0:
        return Fit(a, b, None, "the fitted probability of yes does not rise with the score")
    threshold = _expit((math.log(target / (1 - target)) - a) / b)
    if threshold > scores.max():
        return Fit(a, b, None, f"the fit reaches {target:g} only above the highest verified score "
                               f"({scores.max():.4f}): verify more high-scoring detections")
    if threshold < scores.min():
        return Fit(a, b, None, f"the fit reaches {target:g} below the lowest verified score ({scores.min():.4f}): "
                               "the current threshold already does, as far as the verifications tell")
    return Fit(a, b, threshold, "")


def figure_name(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^\w.-]+", "_", label).strip("._") or "species"
    name, k = f"{base}.png", 2
    while name in taken:
        name, k = f"{base}_{k}.png", k + 1
    taken.add(name)
    return name


def _figure(path: Path, label: str, group: pd.DataFrame, fit: Fit, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    height = {"yes": 1.0, "no": 0.0, "unsure": 0.5}
    colour = {"yes": "#2e7d32", "no": "#c62828", "unsure": "#9e9e9e"}
    for verdict in VERDICTS:
        part = group[group["verdict"] == verdict]
        ax.scatter(part["score"], [height[verdict]] * len(part), s=22, alpha=0.6, color=colour[verdict],
                   label=f"{verdict} ({len(part)})")
    if fit.slope is not None:
        grid = np.linspace(max(group["score"].min(), 1e-4), min(group["score"].max(), 1 - 1e-4), 200)
        ax.plot(grid, 1 / (1 + np.exp(-(fit.intercept + fit.slope * _logit(grid)))), color="#1d3b2a",
                label="fitted P(yes | score)")
    ax.axhline(target, color="#f0a000", linestyle="--", linewidth=1, label=f"target precision {target:g}")
    if fit.threshold is not None:
        ax.axvline(fit.threshold, color="#1d5b9a", linewidth=1.2, label=f"threshold {fit.threshold:.4f}")
    ax.set_xlabel("score")
    ax.set_ylabel("verdict (yes 1, unsure 0.5, no 0)")
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(label + ("" if fit.threshold is not None else f"\n{fit.reason}"), fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fsutil.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _cell(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def species_row(label: str, group: pd.DataFrame, target: float, figure: str) -> tuple[list[str], Fit]:
    counts = group["verdict"].value_counts()
    n_yes, n_no, n_unsure = (int(counts.get(v, 0)) for v in VERDICTS)
    decided = group[group["verdict"] != "unsure"]
    fit = fit_threshold(decided["score"].to_numpy(float), (decided["verdict"] == "yes").to_numpy(), target)
    low, high = precision_interval(n_yes, n_yes + n_no)
    precision = n_yes / (n_yes + n_no) if n_yes + n_no else None
    return [label, str(n_yes + n_no), str(n_yes), str(n_no), str(n_unsure), _cell(precision), _cell(low),
            _cell(high), f"{target:g}", _cell(fit.threshold), _cell(fit.intercept), _cell(fit.slope),
            fit.reason if fit.threshold is None else "", figure], fit


def _earlier_figures(out: Path) -> set[str]:
    """The figures an earlier verification.tsv in `out` names (so that a species no longer verified loses its)."""
    try:
        earlier = pd.read_csv(out / "verification.tsv", sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return set()
    return {name for name in earlier.get("figure", []) if re.fullmatch(r"figures/[\w.-]+\.png", name)}


def write_verification(verifications: pd.DataFrame, out: Path, target: float) -> list[list[str]]:
    """verification.tsv and figures/<label>.png in `out`; returns the rows."""
    earlier = _earlier_figures(out)
    rows, taken = [], set()
    for label, group in sorted(verifications.groupby("label", sort=False), key=lambda item: item[0]):
        name = figure_name(label, taken)
        row, fit = species_row(label, group, target, f"figures/{name}")
        _figure(out / "figures" / name, label, group, fit, target)
        rows.append(row)
    fsutil.write_rows(out / "verification.tsv", RESULT_COLUMNS, rows)
    for stale in earlier - {row[-1] for row in rows}:
        (out / stale).unlink(missing_ok=True)
    return rows
