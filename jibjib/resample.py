"""Band-limited resampling that reproduces resampy's `kaiser_best` filter, fast.

resampy evaluates, for every output sample, its interpolated Kaiser-windowed
sinc table at that sample's fractional input position.  For a rational rate
ratio L/M those positions repeat every L outputs, so the taps of each phase can
be computed once and the whole signal filtered with float32 matrix products.
The filter table is resampy's own file; resampy itself (and numba) is never
imported.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Outputs computed per matrix product: small blocks waste fewer multiplications
# on the zero corners of the banded filter matrix, large ones cost more calls.
BLOCK_OUTPUTS = 32


def _filter_table() -> tuple[np.ndarray, int]:
    spec = importlib.util.find_spec("resampy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("resampy is required for its kaiser_best filter table")
    table = Path(spec.submodule_search_locations[0]) / "data" / "kaiser_best.npz"
    with np.load(table) as data:
        return data["half_window"].astype(np.float64), int(data["precision"])


def output_length(n: int, sr_in: int, sr_out: int) -> int:
    """Output samples for `n` inputs, as resampy computes it."""
    return int(n * float(sr_out) / float(sr_in))


@functools.lru_cache(maxsize=32)
def _plan(sr_in: int, sr_out: int):
    """Per-block weight matrices for one rate pair (built once, then cached)."""
    half_window, precision = _filter_table()
    ratio = sr_out / sr_in
    window = half_window * ratio if ratio < 1 else half_window
    delta = np.diff(window, append=window[-1])
    scale = min(1.0, ratio)
    step = int(scale * precision)
    n_window = window.shape[0]

    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    periods = max(1, -(-BLOCK_OUTPUTS // up))  # whole periods per super-block
    outputs = periods * up
    advance = periods * down

    def wing(frac: float) -> np.ndarray:
        index = frac * precision
        offset = int(index)
        eta = index - offset
        taps = np.arange((n_window - offset) // step) * step + offset
        return window[taps] + eta * delta[taps]

    # Input index (relative to the block start) and taps of every output.
    columns = []
    for o in range(outputs):
        whole, rem = divmod(o * down, up)
        frac = scale * rem / up
        left, right = wing(frac), wing(scale - frac)
        columns.append((whole, left, right))
    reach_left = max(len(c[1]) for c in columns) - 1
    reach_right = max(len(c[2]) for c in columns)

    blocks = []
    for start in range(0, outputs, BLOCK_OUTPUTS):
        block = columns[start:start + BLOCK_OUTPUTS]
        lo = min(n - len(left) + 1 for n, left, _ in block)
        hi = max(n + len(right) for n, _, right in block)
        weights = np.zeros((hi - lo + 1, len(block)), np.float64)
        for c, (n, left, right) in enumerate(block):
            weights[n - lo - np.arange(len(left)), c] = left
            weights[n - lo + 1 + np.arange(len(right)), c] = right
        blocks.append((start, lo, weights.astype(np.float32)))
    return outputs, advance, reach_left, reach_right, tuple(blocks)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D float signal like `resampy.resample(x, sr_in, sr_out, filter="kaiser_best")`.

    Returns float32.  Samples beyond the ends count as zeros, as in resampy.
    """
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    n_out = output_length(x.shape[0], sr_in, sr_out)
    if n_out < 1:
        raise ValueError(f"{x.shape[0]} samples are too few to resample from {sr_in} to {sr_out} Hz")
    outputs, advance, reach_left, reach_right, blocks = _plan(sr_in, sr_out)
    rows = -(-n_out // outputs)
    span = max(lo + w.shape[0] for _, lo, w in blocks)
    padded = np.zeros(reach_left + max(x.shape[0], (rows - 1) * advance + span) + reach_right + 1, np.float32)
    padded[reach_left:reach_left + x.shape[0]] = x
    y = np.empty((rows, outputs), np.float32)
    item = padded.itemsize
    for start, lo, weights in blocks:
        view = as_strided(padded[reach_left + lo:], shape=(rows, weights.shape[0]), strides=(advance * item, item))
        np.matmul(view, weights, out=y[:, start:start + weights.shape[1]])
    return y.reshape(-1)[:n_out]
