"""Front-end parameters of the VGGish log-mel features.

The defaults are those of Google's VGGish reference code; the pretrained
network expects exactly these, so change them only to train from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where it is used: the `jibjib` command's parser reads the config schema, and so this
# module, and numpy loaded there would fix BLAS's thread count before a subcommand could choose it
# (jibjib.cli.common.single_threaded_blas).


@dataclasses.dataclass(frozen=True)
class FrontEnd:
    sample_rate: int = 16000
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    mel_bands: int = 64
    fmin_hz: float = 125.0
    fmax_hz: float = 7500.0
    log_offset: float = 0.01
    patch_frames: int = 96

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_seconds))

    @property
    def fft_length(self) -> int:
        """Next power of two at or above the window length (512 for 400)."""
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def silence(self) -> float:
        """The log-mel of a silent frame, log(log_offset): what padding holds (log-mel 0 is a magnitude of 1)."""
        return math.log(self.log_offset)

    @property
    def min_samples(self) -> int:
        """Samples (at `sample_rate`) needed for one full patch: 15,600 by default."""
        return self.window_samples + (self.patch_frames - 1) * self.hop_samples

    def n_frames(self, n_samples: int) -> int:
        """Frames the front end yields for `n_samples` samples at `sample_rate`."""
        if n_samples < self.window_samples:
            return 0
        return 1 + (n_samples - self.window_samples) // self.hop_samples

    def fingerprint(self) -> str:
        """A short hash that changes whenever any parameter changes (stored in every npz)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "FrontEnd":
        return cls(**(section or {}))


VGGISH = FrontEnd()


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """Where analysis windows sit in a recording's log-mel frames.

    A window is the model's own unit (one patch for VGGish, `seq_len` patches
    for the ConvLSTM); window k covers frames [k * hop, k * hop + window).
    Only whole windows are scored: the audio after the last one, less than a
    hop, is dropped, and a recording shorter than one window has no window.
    Shared by `jibjib analyze` and the export's `windows` signature, so both
    put windows at the same times.

    A window's frames start 10 ms apart but each frame reads 25 ms of audio,
    so the audio a window covers (`span_seconds`, 0.975 s for one VGGish
    patch) is 15 ms longer than its frames times the hop (`window_seconds`,
    0.96 s); a window's end is its start plus the span.
    """

    window_frames: int
    hop_frames: int
    frame_seconds: float  # the front end's hop: 10 ms for VGGish
    frame_length_seconds: float  # the audio one frame reads: 25 ms for VGGish

    @classmethod
    def for_model(cls, params: FrontEnd, patches_per_window: int, hop_seconds: float | None = None) -> "WindowGrid":
        """The grid for a model whose window is `patches_per_window` patches; hop default: half a window."""
        window = params.patch_frames * patches_per_window
        hop = max(1, window // 2) if hop_seconds is None else cls.frames_for(hop_seconds, params)
        return cls(window, hop, params.hop_seconds, params.window_samples / params.sample_rate)

    @staticmethod
    def frames_for(hop_seconds: float, params: FrontEnd) -> int:
        """A hop in seconds as whole frames (at least one); the export's graph rounds the same way."""
        if not (math.isfinite(hop_seconds) and hop_seconds > 0):
            raise ValueError(f"hop must be a positive number of seconds, not {hop_seconds:g}")
        import numpy as np

        # As the export's graph computes it: the float32 a client sends, divided in float64 (float32
        # division rounds differently once TensorFlow turns it into a multiplication), half to even.
        return max(1, int(np.round(np.float64(np.float32(hop_seconds)) / params.hop_seconds)))

    @property
    def window_seconds(self) -> float:
        return self.window_frames * self.frame_seconds

    @property
    def span_seconds(self) -> float:
        """Seconds of audio one window covers: its first frame's start to its last frame's end."""
        return (self.window_frames - 1) * self.frame_seconds + self.frame_length_seconds

    @property
    def hop_seconds(self) -> float:
        return self.hop_frames * self.frame_seconds

    def count(self, n_frames: int) -> int:
        """Whole windows in `n_frames` frames."""
        return 0 if n_frames < self.window_frames else 1 + (n_frames - self.window_frames) // self.hop_frames

    def times(self, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end seconds of windows first .. first + n - 1 (end: start + span_seconds)."""
        import numpy as np

        start = (first + np.arange(n, dtype=np.float64)) * self.hop_frames * self.frame_seconds
        return start, start + self.span_seconds
