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
    span = max(lo + weights.shape[0] for _, lo, weights in blocks)  # inputs one row reads, from its start
    return outputs, advance, reach_left, span, tuple(blocks)


class StreamResampler:
    """Resample a signal fed in blocks of any size; the result does not depend on them.

    Output super-block (row) r reads inputs r * advance + lo ... r * advance +
    span - 1, so a row is computed as soon as its inputs have arrived, and
    only the inputs that later rows still need are kept.  When the total
    length is given, the push that completes it also returns the tail, so a
    signal pushed in one piece costs one pass, as without streaming.
    """

    def __init__(self, sr_in: int, sr_out: int, total: int | None = None) -> None:
        self.sr_in, self.sr_out, self.total = sr_in, sr_out, total
        self._outputs, self._advance, self._reach_left, self._span, self._blocks = _plan(sr_in, sr_out)
        # _pending[0] is input sample rows_done * advance - reach_left; the
        # reach_left samples before the signal count as zeros, as in resampy.
        self._pending = np.zeros(self._reach_left, np.float32)
        self._rows_done = 0
        self._received = 0
        self._finished = False

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed the next samples; returns the outputs they complete (possibly none)."""
        x = np.asarray(x, dtype=np.float32)
        if self._finished or (self.total is not None and self._received + x.shape[0] > self.total):
            raise ValueError(f"more than the announced {self.total} samples, or samples after finish()")
        self._received += x.shape[0]
        if self._received == self.total:
            return self._drain(x)
        self._pending = np.concatenate([self._pending, x])
        # A row is ready when all its inputs are here and none of its outputs
        # can lie beyond the final length (which only grows with more input).
        by_inputs = (self._received - self._span) // self._advance + 1
        by_length = output_length(self._received, self.sr_in, self.sr_out) // self._outputs
        return self._emit(max(0, min(by_inputs, by_length) - self._rows_done))

    def finish(self) -> np.ndarray:
        """The remaining outputs, with zeros after the end of the signal."""
        return np.zeros(0, np.float32) if self._finished else self._drain(np.zeros(0, np.float32))

    def _drain(self, last: np.ndarray) -> np.ndarray:
        """Append the last samples and the zeros after them (one copy), emit every remaining row."""
        self._finished = True
        n_out = output_length(self._received, self.sr_in, self.sr_out)
        rows = max(0, -(-n_out // self._outputs) - self._rows_done)
        kept = self._pending.shape[0]
        size = max(kept + last.shape[0], self._reach_left + (rows - 1) * self._advance + self._span)
        pending = np.zeros(size, np.float32)
        pending[:kept] = self._pending
        pending[kept:kept + last.shape[0]] = last
        self._pending = pending
        before = self._rows_done * self._outputs
        return self._emit(rows)[: max(0, n_out - before)]

    def _emit(self, rows: int) -> np.ndarray:
        if rows == 0:
            return np.zeros(0, np.float32)
        pending, advance = self._pending, self._advance
        # as_strided does no bounds checks: make sure every view stays inside.
        assert pending.shape[0] >= self._reach_left + (rows - 1) * advance + self._span
        y = np.empty((rows, self._outputs), np.float32)
        item = pending.itemsize
        for start, lo, weights in self._blocks:
            view = as_strided(pending[self._reach_left + lo:], shape=(rows, weights.shape[0]),
                              strides=(advance * item, item))
            np.matmul(view, weights, out=y[:, start:start + weights.shape[1]])
        self._rows_done += rows
        self._pending = pending[rows * advance:]
        return y.reshape(-1)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D float signal like `resampy.resample(x, sr_in, sr_out, filter="kaiser_best")`.

    Returns float32.  Samples beyond the ends count as zeros, as in resampy.
    """
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    if output_length(x.shape[0], sr_in, sr_out) < 1:
        raise ValueError(f"{x.shape[0]} samples are too few to resample from {sr_in} to {sr_out} Hz")
    return StreamResampler(sr_in, sr_out, total=x.shape[0]).push(x)
