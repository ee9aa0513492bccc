"""Typed, frozen settings: one dataclass per section of config.yaml, built once from the config.

The defaults live in the schema alone (workflow/schemas/config.schema.yaml):
`from_dict` fills every key a section leaves out from the schema's default,
and refuses a key the schema does not know, so code never carries a second
copy of a default. Lists become tuples, so settings are hashable and cannot
be changed after they are built.

The Snakefile builds `Settings.from_config(config)` once, after the schema
has validated the config; a stage run by hand (`jibjib train --settings`)
builds the sections it needs from the same schema.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from jibjib.core.errors import ConfigError
from jibjib.core.params import FrontEnd

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
MODELS = ("vggish", "convlstm")

T = TypeVar("T")


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema (JSON schema as YAML)."""
    import yaml  # only where the schema is read

    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def schema_node(key: str) -> dict[str, Any]:
    """The schema of one dotted key ('' for the whole config, 'train.augment' for a section)."""
    node = schema()
    for part in filter(None, key.split(".")):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"the config schema has no key {key}") from None
    return node


def schema_default(key: str) -> Any:
    """The default of one dotted key; for a section, the defaults of all its keys."""
    node = schema_node(key)
    if "properties" in node:
        return {name: schema_default(f"{key}.{name}" if key else name) for name in node["properties"]}
    return node["default"]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _convert(value: Any, kind: Any, key: str) -> Any:
    """A config value as the field's type: nested sections built, lists as tuples, ints as floats."""
    if _is_section(kind):
        return build(kind, value, key)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
        origin = typing.get_origin(kind)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(kind)
        item = args[0] if args else Any
        return tuple(float(v) if item is float else v for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls: type[T], values: Mapping[str, Any] | None, key: str) -> T:
    """A settings section from a config mapping: missing keys take the schema's default, unknown ones fail."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a setting of {key} (see docs/configuration.md)")
    kinds = _field_types(cls)
    converted = {}
    for name in names:
        full = f"{key}.{name}" if key else name
        value = values[name] if name in values else schema_default(full)
        converted[name] = _convert(value, kinds[name], full)
    return cls(**converted)


class Section:
    """A config section: `from_dict` builds it at its place in the schema (the class's KEY)."""

    KEY: typing.ClassVar[str]

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None = None) -> T:
        return build(cls, values, cls.KEY)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), as the config would hold them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class LabelSettings(Section):
    KEY = "labels"
    background: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FeatureSettings(Section):
    KEY = "features"
    shards: int


@dataclasses.dataclass(frozen=True)
class SplitFractions(Section):
    KEY = "split.fractions"
    train: float
    val: float
    test: float

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclasses.dataclass(frozen=True)
class SplitSettings(Section):
    KEY = "split"
    fractions: SplitFractions
    seed: int
    min_eval_recordings: int
    recording_pattern: str


@dataclasses.dataclass(frozen=True)
class AugmentSettings(Section):
    """`train.augment`; each step is off at 0 (probability, count or range)."""

    KEY = "train.augment"
    enabled: bool
    random_offsets: bool  # cut each file's patches from a random first frame, not only frame 0
    gain_db: float  # level change, uniform in +-gain_db
    background_probability: float  # share of examples mixed with a background recording
    background_snr_db: tuple[float, float]  # example power over the background's
    time_masks: int  # per patch
    time_mask_frames: int  # widest time mask
    freq_masks: int  # per patch
    freq_mask_bands: int  # widest frequency mask
    mixup_probability: float  # share of examples mixed with another example of the batch
    mixup_alpha: float  # Beta(alpha, alpha) of the mixing weight
    union_mix_probability: float  # share of examples summed (power domain) with another, targets united
    lowpass_probability: float  # share of examples heard from far away
    lowpass_hz: tuple[float, float]  # range of the low-pass corner

    def __post_init__(self) -> None:
        for key in ("background_snr_db", "lowpass_hz"):  # ranges the schema cannot order
            low, high = getattr(self, key)
            if low > high:
                raise ConfigError(f"train.augment.{key}: must be [low, high] with low <= high, "
                                  f"got [{low:g}, {high:g}]")

    @property
    def changes_examples(self) -> bool:
        """Whether a step other than the background mix (which needs background recordings) is on."""
        return self.gain_db > 0 or self.time_masks > 0 or self.freq_masks > 0 or self.lowpass_probability > 0

    def active(self) -> AugmentSettings:
        """These settings, or every step off when `enabled` is false."""
        if self.enabled:
            return self
        return self.off()

    def off(self) -> AugmentSettings:
        """Every step off (what validation and evaluation see)."""
        return dataclasses.replace(self, enabled=False, random_offsets=False, gain_db=0.0,
                                   background_probability=0.0, time_masks=0, freq_masks=0, mixup_probability=0.0,
                                   union_mix_probability=0.0, lowpass_probability=0.0)


@dataclasses.dataclass(frozen=True)
class TrainSettings(Section):
    """`train`: the settings every training run shares."""

    KEY = "train"
    seed: int
    class_balance: str  # weights | sampling | none
    mixed_precision: bool
    jit_compile: str | bool  # auto | true | false
    steps_per_execution: int | str  # a count, or auto
    shuffle_buffer: int
    checkpoint_every_epochs: int
    nodes: int
    tasks_per_node: int
    gpus_per_task: int
    use_background: bool
    label_smoothing: float
    lr_schedule: str  # cosine | constant
    warmup_epochs: float
    lr_scaling: str  # none (batch_size is the global batch) | sqrt | linear (batch_size per replica)
    monitor: str  # val_cmap | val_loss: what early stopping and the best epoch follow
    call_windows: str  # activity | all: which windows of a species file are that species
    activity_threshold_db: float  # a patch is active from this activity score on
    inactive_windows: str  # drop | negative: inactive windows of species files in training
    inactive_weight: float  # loss weight of an inactive window kept as a weak negative
    augment: AugmentSettings


@dataclasses.dataclass(frozen=True)
class ModelSettings(Section):
    """What both models' sections have."""

    dropout: float
    multi_label: bool  # sigmoid outputs (several species or none per example) instead of softmax
    epochs: int
    batch_size: int
    learning_rate: float
    patience: int


@dataclasses.dataclass(frozen=True)
class VggishSettings(ModelSettings):
    KEY = "vggish"
    checkpoint: str | None
    trainable: str
    embedding_cache: str  # auto | off
    head_units: int

    def __post_init__(self) -> None:
        if self.embedding_cache is False:  # YAML 1.1 reads a bare `off` as false
            object.__setattr__(self, "embedding_cache", "off")

    @property
    def seq_len(self) -> None:
        """VGGish trains on single patches."""
        return None


@dataclasses.dataclass(frozen=True)
class ConvlstmSettings(ModelSettings):
    KEY = "convlstm"
    seq_len: int  # patches per sequence
    short_files: str  # pad | skip
    conv_filters: tuple[int, ...]
    lstm_units: int
    dense_units: int


@dataclasses.dataclass(frozen=True)
class EvaluateSettings(Section):
    KEY = "evaluate"
    target_precision: float
    min_threshold_support: int  # val files a species needs for its own thresholds
    top_k: int


@dataclasses.dataclass(frozen=True)
class ExportSettings(Section):
    KEY = "export"
    version: int | str  # a TF Serving version number, or "auto": the next one when the inputs changed
    keep_versions: int  # with version auto: version folders kept per model
    top_k: int
    tflite: bool
    legacy_serving: bool


@dataclasses.dataclass(frozen=True)
class ReviewSettings(Section):
    KEY = "analyze.review"
    enabled: bool
    top: int
    score_bins: int
    per_bin: int
    seed: int


@dataclasses.dataclass(frozen=True)
class AnalyzeSettings(Section):
    KEY = "analyze"
    input_dir: str | None
    models: tuple[str, ...] | None  # None: every trained model
    shards: int
    hop_seconds: float | None
    min_score: float | None
    merge: bool
    format: tuple[str, ...]  # of raven, audacity, kaleidoscope, csv (one name in the config is a list of one)
    engine: str  # savedmodel | tflite
    label_column: str
    species_lists: str | None
    site_pattern: str | None
    time_pattern: str | None
    review: ReviewSettings
    verifications: str | None
    target_precision: float

    def __post_init__(self) -> None:
        if isinstance(self.format, str):
            object.__setattr__(self, "format", (self.format,))


@dataclasses.dataclass(frozen=True)
class SoundscapeSettings(Section):
    KEY = "soundscapes"
    audio_dir: str | None
    annotations: str | None


@dataclasses.dataclass(frozen=True)
class SelfTrainingSettings(Section):
    """`self_training`: teacher-student rounds on unlabelled field audio (off without audio_dir)."""

    KEY = "self_training"
    audio_dir: str | None
    rounds: int
    models: tuple[str, ...]
    hop_seconds: float | None
    threshold_scale: float  # positive: probability >= scale x the val window threshold
    negative_scale: float  # negative: every probability < scale x its val window threshold
    negatives_per_positive: float
    batch_share: float  # pseudo-labelled windows per batch, as a share of the batch size

    @property
    def enabled(self) -> bool:
        return bool(self.audio_dir) and self.rounds > 0 and bool(self.models)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What one training run is given: the shared `train` section and its model's own."""

    model: str
    train: TrainSettings
    net: VggishSettings | ConvlstmSettings

    @classmethod
    def of(cls, model: str, train: Mapping[str, Any] | None = None,
           net: Mapping[str, Any] | None = None) -> RunSettings:
        """A run of `model` from config mappings (missing keys take the schema's defaults)."""
        if model not in MODEL_SETTINGS:
            raise ConfigError(f"model: {model!r} is not one of {', '.join(MODELS)}")
        return cls(model, TrainSettings.from_dict(train), MODEL_SETTINGS[model].from_dict(net))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "train": self.train.to_dict(), self.model: self.net.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSettings:
        """From `to_dict`'s form (the --settings of jibjib train, train.json's settings)."""
        model = values.get("model")
        unknown = sorted(set(values) - {"model", "train", model})
        if unknown:
            raise ConfigError(f"settings: unknown section {unknown[0]}")
        return cls.of(model, values.get("train"), values.get(model))

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings: not valid JSON ({exc})") from None
        if not isinstance(values, dict):
            raise ConfigError("--settings: not a JSON object of model, train and the model's section")
        return cls.from_dict(values)


MODEL_SETTINGS: dict[str, type[VggishSettings] | type[ConvlstmSettings]] = {
    "vggish": VggishSettings, "convlstm": ConvlstmSettings}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole configuration, typed."""

    data_dir: str
    label_map: str | None
    labels: LabelSettings
    frontend: FrontEnd
    features: FeatureSettings
    split: SplitSettings
    models: tuple[str, ...]
    train: TrainSettings
    vggish: VggishSettings
    convlstm: ConvlstmSettings
    evaluate: EvaluateSettings
    export: ExportSettings
    analyze: AnalyzeSettings
    soundscapes: SoundscapeSettings
    self_training: SelfTrainingSettings

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return build(cls, config, "")

    def run(self, model: str) -> RunSettings:
        """The settings of `model`'s training run."""
        return RunSettings(model, self.train, getattr(self, model))

    @property
    def self_training_models(self) -> tuple[str, ...]:
        """The trained models that self-train (none when self_training is off)."""
        if not self.self_training.enabled:
            return ()
        return tuple(model for model in self.models if model in self.self_training.models)

    @property
    def analysis_models(self) -> tuple[str, ...]:
        """The models the analysis stage runs (none without analyze.input_dir)."""
        if not self.analyze.input_dir:
            return ()
        return self.models if self.analyze.models is None else self.analyze.models
