"""Training augmentation: each step does what it says, in the power domain where sounds add, seeded, and
never outside training; balanced sampling; targets of background and multi-species files."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

tf = pytest.importorskip("tensorflow")

from conftest import REPO, pack_files  # noqa: E402
from jibjib.core import fsutil  # noqa: E402
from jibjib.core.settings import AugmentSettings  # noqa: E402
from jibjib.labels.tables import split_files  # noqa: E402
from jibjib.training.examples import file_targets  # noqa: E402
from jibjib.training.inputs import InputSpec, training_dataset  # noqa: E402
from jibjib.training.windows import WindowRule  # noqa: E402
from jibjib.features.frontend import log_mel  # noqa: E402
from jibjib.packing import PackedFeatures  # noqa: E402
from jibjib.core.params import VGGISH  # noqa: E402
from jibjib.training.augment import (
    augment_example, lowpass_gain, mel_band_hz, mix_in_power, mixup_batch, to_magnitude,
)

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled

OFF = dataclasses.replace(AugmentSettings.from_dict({"enabled": False}).active(), enabled=True)  # every step off
OFFSET = VGGISH.log_offset


def only(**steps) -> AugmentSettings:
    return dataclasses.replace(OFF, **steps)


def seed(n: int) -> tf.Tensor:
    return tf.constant([n, 7], tf.int64)


def random_log_mel(rng: np.random.Generator, units: int = 1) -> np.ndarray:
    return np.log(rng.gamma(2.0, 0.5, size=(units, 96, 64)) + OFFSET).astype(np.float32)


def test_defaults_agree_with_the_config_schema() -> None:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["train"]["properties"]["augment"]["properties"]
    defaults = {name: tuple(spec["default"]) if isinstance(spec["default"], list) else spec["default"]
                for name, spec in section.items()}
    assert defaults == dataclasses.asdict(AugmentSettings.from_dict()) | {
        key: tuple(value) for key, value in dataclasses.asdict(AugmentSettings.from_dict()).items()
        if isinstance(value, tuple)}
    with pytest.raises(ValueError, match="train.augment.gain: not a setting of train.augment"):
        AugmentSettings.from_dict({"gain": 3})
    with pytest.raises(ValueError, match="low <= high"):
        AugmentSettings.from_dict({"background_snr_db": [10, 0]})


def test_gain_scales_the_magnitudes() -> None:
    x = random_log_mel(np.random.default_rng(0))
    out = augment_example(tf.constant(x), None, seed(1), only(gain_db=6.0), VGGISH).numpy()
    gain = (np.exp(out) - OFFSET) / (np.exp(x) - OFFSET)
    assert np.allclose(gain, gain.flat[0], rtol=1e-3)  # one gain for the whole example
    assert 10 ** (-6 / 20) - 1e-3 <= gain.flat[0] <= 10 ** (6 / 20) + 1e-3 and abs(gain.flat[0] - 1) > 1e-3


def test_log_mel_below_the_offset_stays_finite() -> None:
    """Features of real audio never go below log(offset), a log-mel from elsewhere may: no NaN from a gain."""
    x = np.full((1, 96, 64), np.log(OFFSET) - 2.0, np.float32)
    for n in range(8):
        out = augment_example(tf.constant(x), None, seed(n), only(gain_db=6.0, lowpass_probability=1.0), VGGISH)
        assert np.isfinite(out.numpy()).all()


def test_time_and_frequency_masks_hide_stripes_with_the_patch_mean() -> None:
    x = random_log_mel(np.random.default_rng(1), units=3)
    out = augment_example(tf.constant(x), None, seed(2), only(time_masks=2, time_mask_frames=10), VGGISH).numpy()
    for patch, original in zip(out, x):
        changed_frames = np.flatnonzero((patch != original).any(axis=1))
        assert 0 < changed_frames.size <= 20
        # A masked frame is masked across every band, with the patch's mean of the masked result.
        assert (patch[changed_frames] == patch[changed_frames[0], 0]).all()
    assert not np.array_equal(out[0] != x[0], out[1] != x[1])  # each patch masked on its own
    out = augment_example(tf.constant(x), None, seed(3), only(freq_masks=1, freq_mask_bands=8), VGGISH).numpy()
    changed_bands = np.flatnonzero((out[0] != x[0]).any(axis=0))
    assert changed_bands.size <= 8 and np.array_equal(changed_bands, np.arange(changed_bands.min(),
                                                                                 changed_bands.max() + 1))


def test_background_mix_is_in_the_power_domain() -> None:
    """Against a direct computation, and against the log-mel of the summed waveforms."""
    rng = np.random.default_rng(2)
    sr = VGGISH.sample_rate
    t = np.arange(int(0.975 * sr)) / sr
    song = 0.3 * np.sin(2 * np.pi * (2500 + 800 * np.sin(2 * np.pi * 3 * t)) * t)
    noise = 0.05 * rng.standard_normal(t.size)
    features = [log_mel(w, VGGISH)[:96][None].astype(np.float32) for w in (song, noise, song + noise)]
    signal, background, summed = features
    m_s, m_n = np.exp(signal) - OFFSET, np.exp(background) - OFFSET
    snr = 10 * np.log10(np.mean(m_s**2) / np.mean(m_n**2))  # the waveforms as they were added
    mixed = augment_example(tf.constant(signal), tf.constant(background), seed(4),
                            only(background_probability=1.0, background_snr_db=(snr, snr)), VGGISH).numpy()
    assert np.allclose(mixed, np.log(np.sqrt(m_s**2 + m_n**2) + OFFSET), atol=1e-4)
    # Close to the features of the real mix; adding log-mels (multiplying spectra) is far off.
    assert np.abs(mixed - summed).mean() < 0.2 < np.abs(signal + background - summed).mean()
    # The SNR sets the noise power: 10 dB more signal is a tenth of the noise power.
    quieter = mix_in_power(tf.constant(m_s[None]), tf.constant(m_n[None]), tf.constant(snr + 10.0)).numpy()
    assert np.mean(quieter**2 - m_s**2) == pytest.approx(np.mean(m_n**2) / 10, rel=1e-3)


def test_lowpass_attenuates_high_bands() -> None:
    x = random_log_mel(np.random.default_rng(3))
    aug = only(lowpass_probability=1.0, lowpass_hz=(3000.0, 3000.0))
    out = augment_example(tf.constant(x), None, seed(5), aug, VGGISH).numpy()
    ratio = ((np.exp(out) - OFFSET) / (np.exp(x) - OFFSET)).mean(axis=(0, 1))
    band_hz = mel_band_hz(VGGISH)
    expected = lowpass_gain(tf.constant(band_hz, tf.float32), tf.constant(3000.0)).numpy()
    assert np.allclose(ratio, expected, rtol=1e-3)
    assert ratio[band_hz < 1000].min() > 0.99 and ratio[band_hz > 6000].max() < 0.3


def test_mixup_mixes_inputs_and_targets_by_the_same_weight() -> None:
    x = tf.constant(np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 4, 3), np.float32))
    y = tf.constant(np.eye(8, 4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3]])
    mixed_x, mixed_y = (v.numpy() for v in mixup_batch(x, y, seed(6), probability=1.0, alpha=0.4))
    for i in range(8):
        partner = (i - 1) % 8
        weight = mixed_y[i, i % 4]
        assert 0.5 <= weight <= 1.0
        assert mixed_x[i, 0, 0] == pytest.approx(weight * i + (1 - weight) * partner, abs=1e-5)
        assert mixed_y[i].sum() == pytest.approx(1.0)
    unchanged_x, unchanged_y = mixup_batch(x, y, seed(6), probability=0.0, alpha=0.4)
    assert np.array_equal(unchanged_x, x) and np.array_equal(unchanged_y, y)
    # Loss weights (a weak negative's 0.3 beside full examples) mix by the same weight as the targets.
    loss_weight = np.array([1.0, 0.3] * 4, np.float32)
    *_, mixed_w = (v.numpy() for v in mixup_batch(x, y, seed(6), 1.0, 0.4, tf.constant(loss_weight)))
    for i in range(8):
        weight = mixed_y[i, i % 4]
        assert mixed_w[i] == pytest.approx(weight * loss_weight[i] + (1 - weight) * loss_weight[(i - 1) % 8], abs=1e-6)


def test_same_seed_same_augmentation() -> None:
    x = tf.constant(random_log_mel(np.random.default_rng(4), units=2))
    bg = tf.constant(random_log_mel(np.random.default_rng(5), units=2))
    aug = AugmentSettings.from_dict({"lowpass_probability": 0.5})
    first, again = (augment_example(x, bg, seed(8), aug, VGGISH).numpy() for _ in range(2))
    other = augment_example(x, bg, seed(9), aug, VGGISH).numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def make_corpus(tmp_path: Path, realistic: bool = False) -> pd.DataFrame:
    """Per file: log-mel band 0 = the file number, the other bands the frame index (so a patch tells where it
    was cut, exactly even in float16), or with `realistic` random log-mel values; a background folder and a
    two-species file."""
    features = tmp_path / "features"
    rng = np.random.default_rng(0)
    rows = []
    folders = ["Alpha_one"] * 6 + ["Beta_two"] * 2 + ["noise"] * 2 + ["Alpha_one,Beta_two"]
    for i, folder in enumerate(folders):
        frames = 96 * (2 if folder == "Alpha_one" else 6) + 40
        path = f"{folder}/{folder}-{i}_1.wav"
        values = np.arange(frames, dtype=np.float32)[:, None] * np.ones(64, np.float32)
        values[:, 0] = i
        if realistic:
            values = rng.normal(-2.0, 1.5, size=(frames, 64))
        fsutil.save_npz(features / Path(path).with_suffix(".npz"), log_mel=values.astype(np.float32))
        rows.append({"path": path, "label": folder, "species": "" if folder == "noise" else folder,
                     "recording_id": f"r{i}", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": ["Alpha_one", "Beta_two"], "n_files": 1, "n_recordings": 1,
                  "seconds": 1.0}).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    return split_files(tmp_path / "split.tsv", tmp_path / "labels.tsv", features, "train")


@pytest.fixture
def corpus(tmp_path: Path) -> pd.DataFrame:
    return make_corpus(tmp_path)


@pytest.fixture(params=["npz", "packed"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> PackedFeatures | None:
    """The two training inputs: each file's npz (None), or the packed features of the corpus's files."""
    return pack_files(tmp_path) if request.param == "packed" else None


def test_background_and_multi_species_targets(corpus: pd.DataFrame) -> None:
    softmax = file_targets(corpus, InputSpec(windows=EVERY_WINDOW, n_classes=2, multi_label=False))
    sigmoid = file_targets(corpus, InputSpec(windows=EVERY_WINDOW, n_classes=2, multi_label=True))
    background = (corpus["label"] == "noise").to_numpy()
    assert (sigmoid[background] == 0).all() and (softmax[background] == 0.5).all()
    both = (corpus["label"] == "Alpha_one,Beta_two").to_numpy()
    assert (sigmoid[both] == 1).all()
    assert np.allclose(softmax.sum(axis=1), 1.0)


def test_random_offsets_move_the_grid_and_evaluation_keeps_it(corpus: pd.DataFrame,
                                                               source: PackedFeatures | None) -> None:
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=only(random_offsets=True), shuffle_buffer=4)
    offsets = Counter()
    for _ in range(3):
        for patches, _targets in training_dataset(corpus, spec, 8, training=True, seed=1, packs=source):
            offsets.update((patches.numpy()[:, 0, 1] % 96).astype(int).tolist())
    assert len(offsets) > 3 and max(offsets) < 96
    # Evaluation: the fixed grid, every value as stored, whatever the augmentation settings.
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2,
                     augmentation=AugmentSettings.from_dict({"lowpass_probability": 1.0}))
    for patches, _targets in training_dataset(corpus, spec, 8, training=False, packs=source):
        values = patches.numpy()
        assert (values[:, 0, 1] % 96 == 0).all()
        assert np.array_equal(values[:, :, 1] - values[:, :1, 1], np.tile(np.arange(96), (len(values), 1)))


def test_training_input_is_reproducible(tmp_path: Path, source: PackedFeatures | None) -> None:
    corpus = make_corpus(tmp_path, realistic=True)
    source = pack_files(tmp_path) if source is not None else None  # of the realistic values
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2,
                     augmentation=AugmentSettings.from_dict({"lowpass_probability": 0.5}), shuffle_buffer=8)

    def first_epoch(seed_value: int) -> list[np.ndarray]:
        return [patches.numpy() for patches, _ in
                training_dataset(corpus, spec, 4, training=True, seed=seed_value, packs=source)]

    a, b, c = first_epoch(3), first_epoch(3), first_epoch(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_balanced_sampling_draws_classes_evenly(corpus: pd.DataFrame, source: PackedFeatures | None) -> None:
    """Alpha_one has 6 short files, Beta_two 2 long ones, the background 2, the pair 1: each gives a quarter."""
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, class_balance="sampling", augmentation=OFF, shuffle_buffer=64)
    folder_of = dict(zip(corpus["recording_id"], corpus["label"]))

    def folders(patches: tf.Tensor) -> list[str]:  # the file number is in the values
        return [folder_of[f"r{int(v)}"] for v in patches.numpy()[:, 0, 0]]

    drawn = Counter()
    epochs = training_dataset(corpus, spec, 16, training=True, seed=5, packs=source)
    for _ in range(40):  # each epoch draws anew
        for patches, _targets in epochs:
            drawn.update(folders(patches))
    total = sum(drawn.values())
    shares = {label: n / total for label, n in drawn.items()}
    assert set(shares) == {"Alpha_one", "Beta_two", "noise", "Alpha_one,Beta_two"}, drawn
    assert all(abs(share - 0.25) < 0.05 for share in shares.values()), shares
    # Unbalanced, Alpha_one's share is what its patches are: 6 x 2 of 12 + 2 x 6 + 2 x 6 + 6 = 42.
    plain = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=OFF)
    counts = Counter()
    for patches, _ in training_dataset(corpus, plain, 16, training=True, seed=5, packs=source):
        counts.update(folders(patches))
    assert counts["Alpha_one"] == 12 and sum(counts.values()) == 42


def test_training_refuses_several_species_under_softmax(tmp_path: Path) -> None:
    from jibjib.core.errors import LabelError
    from jibjib.core.settings import RunSettings
    from jibjib.training.run import train

    make_corpus(tmp_path)
    with pytest.raises(LabelError, match=r"one species per file, but 1 of the files name several \(Alpha_one,Beta_two/.*set multi_label: true"):
        train(RunSettings.of("convlstm", {"seed": 0}, {"multi_label": False}), tmp_path / "split.tsv",
              tmp_path / "labels.tsv", tmp_path / "features", tmp_path / "out")


SILENCE = float(np.log(OFFSET))  # the log-mel of a silent frame: what padding must look like


def sequence_batches(corpus: pd.DataFrame, source: PackedFeatures | None, aug: AugmentSettings,
                     seq_len: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(patches, mask) of each training batch of 8 sequences of one epoch (seed 1)."""
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, seq_len=seq_len, augmentation=aug, shuffle_buffer=64)
    return [(x["patches"].numpy(), x["mask"].numpy())
            for x, _ in training_dataset(corpus, spec, 8, training=True, seed=1, packs=source)]


def assert_cudnn_masks(mask: np.ndarray) -> None:
    """What cuDNN's LSTM (Keras on a GPU) takes: right-padded masks (the real patches first), none empty."""
    assert mask.any(axis=1).all(), "a sequence without a real patch"
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None, :] < mask.sum(axis=1)[:, None])


def test_mixup_unmasks_padding_only_on_the_rows_it_mixed(corpus: pd.DataFrame, source: PackedFeatures | None) -> None:
    """A row that is not mixed keeps its mask; a mixed row holds the real patches of both. Every mask stays
    right-padded and non-empty."""
    plain = np.concatenate([m for _, m in sequence_batches(corpus, source, OFF)])
    rarely = np.concatenate([m for _, m in sequence_batches(corpus, source, only(mixup_probability=1e-9))])
    assert (~plain).any()
    assert_cudnn_masks(plain)
    np.testing.assert_array_equal(rarely, plain)
    for (_, unmixed), (_, mixed) in zip(sequence_batches(corpus, source, OFF),
                                        sequence_batches(corpus, source, only(mixup_probability=1.0)), strict=True):
        np.testing.assert_array_equal(mixed, unmixed | np.roll(unmixed, 1, axis=0))  # each with the one before
        assert_cudnn_masks(mixed)


def test_padding_is_silence_and_the_background_mix_measures_only_real_patches(
        tmp_path: Path, source: PackedFeatures | None) -> None:
    """Padding is the log-mel of silence (log of the offset), not 0 (a magnitude of about 1), and stays silent
    in a mix; the SNR of a mix is that of the example's real patches."""
    corpus = make_corpus(tmp_path, realistic=True)
    source = pack_files(tmp_path) if source is not None else None
    plain = sequence_batches(corpus, source, OFF)
    mixed = sequence_batches(corpus, source, only(background_probability=1.0, background_snr_db=(0.0, 0.0)))
    padded = 0
    for (x, mask), (y, mixed_mask) in zip(plain, mixed, strict=True):
        np.testing.assert_array_equal(mask, mixed_mask)
        np.testing.assert_allclose(x[~mask], SILENCE, atol=2e-3)
        np.testing.assert_allclose(y[~mask], SILENCE, atol=2e-3)
        signal, total = ((np.exp(v.astype(np.float64)) - OFFSET) ** 2 for v in (x, y))
        for i in range(len(x)):
            real = mask[i]
            padded += int((~real).any())
            # 0 dB: the background added as much power to the real patches as they have.
            assert (total[i][real] - signal[i][real]).mean() == pytest.approx(signal[i][real].mean(), rel=0.02)
    assert padded >= 4


def test_the_xla_compilable_gamma_sampler_draws_gamma() -> None:
    """mixup's Beta weights come from Gamma draws of stateless ops XLA compiles (stateless_gamma has no XLA
    kernel): against the Gamma distribution itself, below and above alpha 1."""
    from scipy import stats

    from jibjib.training.augment import stateless_gamma

    for alpha in (0.4, 2.0):
        draws = tf.function(lambda s: stateless_gamma([20_000], s, alpha), jit_compile=True)(seed(11)).numpy()
        assert draws.min() > 0 and stats.kstest(draws, stats.gamma(alpha).cdf).pvalue > 0.01


def test_union_mix_adds_two_examples_in_the_power_domain_with_united_targets() -> None:
    from jibjib.training.augment import augment_gathered

    rng = np.random.default_rng(3)
    magnitude = rng.uniform(0.0, 1.0, (4, 1, 96, 64)).astype(np.float32)
    units = np.log(magnitude + OFFSET)
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    batch = {"units": tf.constant(units), "mask": tf.ones([4, 1], bool), "seed": tf.constant([5, 6, 7, 8], tf.int64),
             "weight": tf.constant([1.0, 0.25, 0.25, 1.0])}
    out, united = augment_gathered(batch, tf.constant(targets), only(union_mix_probability=1.0), VGGISH)
    partner = np.roll(np.arange(4), 1)  # each example is mixed with the one before it
    expected = np.log(np.sqrt(magnitude ** 2 + magnitude[partner] ** 2) + OFFSET)
    np.testing.assert_allclose(out["units"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert united.numpy().tolist() == np.maximum(targets, targets[partner]).tolist()
    assert out["weight"].numpy().tolist() == [1.0, 1.0, 0.25, 1.0]  # the larger weight of the two
    # Half the examples at 0.5: the chosen ones mixed, the others as they were, deterministic by seed.
    half, half_targets = augment_gathered(batch, tf.constant(targets), only(union_mix_probability=0.5), VGGISH)
    again, _ = augment_gathered(batch, tf.constant(targets), only(union_mix_probability=0.5), VGGISH)
    mixed = ~np.isclose(half["units"].numpy(), units, atol=1e-6).all(axis=(1, 2, 3))
    assert 0 < mixed.sum() < 4 and np.array_equal(half["units"].numpy(), again["units"].numpy())
    assert np.allclose(half["units"].numpy()[~mixed], units[~mixed], atol=1e-6)
    assert half_targets.numpy()[~mixed].tolist() == targets[~mixed].tolist()
    assert half_targets.numpy()[mixed].tolist() == np.maximum(targets, targets[partner])[mixed].tolist()
