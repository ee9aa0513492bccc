"""InputSpec: what the training input cuts, targets and augments, from one run's settings."""

from __future__ import annotations

import dataclasses

from jibjib.core.params import VGGISH, FrontEnd
from jibjib.core.settings import AugmentSettings, ConvlstmSettings, RunSettings, TrainSettings, schema_default
from jibjib.training.windows import WindowRule


def _no_augmentation() -> AugmentSettings:
    return AugmentSettings.from_dict().off()


def _default_windows() -> WindowRule:
    return WindowRule.of(TrainSettings.from_dict())


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the training input cuts, targets and augments (one model's settings).

    Built for a run by `InputSpec.of`; a field left out takes the config
    schema's default, and the augmentation is off.
    """

    n_classes: int
    seq_len: int | None = None  # None: single patches (VGGish); else sequences of seq_len patches (ConvLSTM)
    # VGGish has no short_files setting: its npz reader pads as the ConvLSTM's default does.
    short_files: str = schema_default("convlstm.short_files")
    multi_label: bool = schema_default("vggish.multi_label")
    label_smoothing: float = schema_default("train.label_smoothing")
    class_balance: str = schema_default("train.class_balance")  # "sampling": every class gives as many examples
    shuffle_buffer: int = schema_default("train.shuffle_buffer")
    augmentation: AugmentSettings = dataclasses.field(default_factory=_no_augmentation)
    windows: WindowRule = dataclasses.field(default_factory=_default_windows)  # which windows are call windows
    frontend: FrontEnd = VGGISH

    @classmethod
    def of(cls, run: RunSettings, n_classes: int) -> InputSpec:
        """The training input of `run`, a model of `n_classes` outputs."""
        net, train = run.net, run.train
        short = {"short_files": net.short_files} if isinstance(net, ConvlstmSettings) else {}
        augmentation = train.augment
        if not net.multi_label:  # the union of two labels is no softmax target
            augmentation = dataclasses.replace(augmentation, union_mix_probability=0.0)
        return cls(n_classes=n_classes, seq_len=net.seq_len, multi_label=net.multi_label,
                   label_smoothing=train.label_smoothing, class_balance=train.class_balance,
                   shuffle_buffer=train.shuffle_buffer, augmentation=augmentation, windows=WindowRule.of(train),
                   **short)

    @property
    def unit_patches(self) -> int:
        return self.seq_len or 1
