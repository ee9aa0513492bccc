"""Front-end parameters of the VGGish log-mel features.

The defaults are those of Google's VGGish reference code; the pretrained
network expects exactly these, so change them only to train from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


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
