"""On-the-fly augmentation of log-mel training examples, in TensorFlow ops, seeded per example.

What a focal recording lacks and a soundscape has: a bird that is faint,
under wind and insects, cut off by a window edge, partly masked by another
sound, heard from far away (its high notes lost) or together with another
bird. Each step below imitates one of these. They run inside the training
step (jibjib.training.trainer), on the device that trains, on training
batches only (never on validation or evaluation); every op compiles with XLA.

Log-mel values are log(m + offset), m the mel-weighted magnitude spectrum.
Sounds are added in the power domain, m_mix = sqrt(m_a^2 + m_b^2), which is
what the spectrum of the summed waveforms is in expectation for independent
sounds; adding log-mels would multiply the spectra instead.

Every random choice comes from a stateless generator seeded by the batch's
first example's seed (each example carries one), so one seed gives the same
augmented epoch on any machine and with any number of parallel workers, and
each replica of a distributed step draws its own. The settings of the steps are `train.augment`
(jibjib.core.settings.AugmentSettings).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from jibjib.core.params import FrontEnd
from jibjib.core.settings import AugmentSettings
from jibjib.features.frontend import hertz_to_mel, mel_to_hertz


def to_magnitude(log_mel: tf.Tensor, log_offset: float) -> tf.Tensor:
    """The mel magnitudes a log-mel was computed from (never negative)."""
    return tf.maximum(tf.exp(log_mel) - log_offset, 0.0)


def to_log_mel(magnitude: tf.Tensor, log_offset: float) -> tf.Tensor:
    return tf.math.log(magnitude + log_offset)


def mix_in_power(signal: tf.Tensor, noise: tf.Tensor, snr_db: tf.Tensor, share: tf.Tensor | float = 1.0,
                 valid: tf.Tensor | None = None) -> tf.Tensor:
    """Mel magnitudes of `signal` plus `noise` scaled to `snr_db` (mean power of signal over noise).

    The first axis is the batch: each example is scaled by its own mean
    powers, its `snr_db` ((batch, 1, ...), or a scalar for all) and its
    `share` of the noise (1: mixed, 0: the signal alone). `valid` ((batch,
    units) bool, for (batch, units, ...) inputs) names the real units: both
    mean powers are taken over them alone, and only they get noise, so a
    padded sequence is mixed at the SNR of its real patches and its padding
    stays silent.
    """
    signal_power, noise_power = tf.square(signal), tf.square(noise)  # a rounding below zero squares away
    axes = list(range(1, len(signal.shape)))
    if valid is not None:
        weight = tf.reshape(tf.cast(valid, signal.dtype), tf.concat([tf.shape(valid), [1] * (len(signal.shape) - 2)], 0))
        noise_power = noise_power * weight
    # Sums over the same cells: the count of cells cancels in the ratio of the means.
    signal_total = tf.reduce_sum(signal_power if valid is None else signal_power * weight, axes, keepdims=True)
    scale = share * signal_total / (tf.reduce_sum(noise_power, axes, keepdims=True) * 10.0 ** (snr_db / 10.0) + 1e-20)
    return tf.sqrt(signal_power + scale * noise_power)


def mel_band_hz(params: FrontEnd) -> np.ndarray:
    """Centre frequency of each mel band of the front end (the mel scale of jibjib.frontend)."""
    edges = np.linspace(hertz_to_mel(params.fmin_hz), hertz_to_mel(params.fmax_hz), params.mel_bands + 2)
    return mel_to_hertz(edges[1:-1])


def lowpass_gain(band_hz: tf.Tensor, corner_hz: tf.Tensor) -> tf.Tensor:
    """Magnitude response of a 2nd-order Butterworth low-pass at each band (12 dB per octave)."""
    return tf.math.rsqrt(1.0 + tf.pow(band_hz / corner_hz, 4.0))


def _masks(seed: tf.Tensor, units: int | tf.Tensor, count: int, width: int, size: int) -> tf.Tensor:
    """(units, size) bool: `count` masks per unit, each 0..width wide at a random place."""
    width = min(width, size)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    widths = tf.random.stateless_uniform([units, count], seeds[0], 0, width + 1, tf.int32)
    starts = tf.cast(tf.random.stateless_uniform([units, count], seeds[1]) * tf.cast(size - widths + 1, tf.float32),
                     tf.int32)
    position = tf.range(size)[None, None, :]
    inside = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
    return tf.reduce_any(inside, axis=1)


def augment_batch(patches: tf.Tensor, background: tf.Tensor | None, seed: tf.Tensor, aug: AugmentSettings,
                  params: FrontEnd, mask: tf.Tensor | None = None) -> tf.Tensor:
    """A batch of examples, (batch, units, patch_frames, bands) of log-mel, augmented; `background` has its shape.

    Every random choice is drawn per example (one vector per step for the
    whole batch, from the batch's seed), so a batch costs a few large ops
    rather than a few small ones per example. Order: background mix, distance
    low-pass and gain act on the sound, in the magnitude domain; the masks
    then hide parts of the result, each masked cell set to its unit's mean.
    `mask` ((batch, units) bool) names the real units of padded sequences (see
    mix_in_power); padding that is silence stays silence through every step.
    """
    batch = tf.shape(patches)[0]
    _, units, frames, bands = patches.shape
    seeds = tf.random.experimental.stateless_split(seed, 8)

    def per_example(i: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], low, high)

    def chance(i: int, probability: float) -> tf.Tensor:
        return per_example(i) < probability

    mixing = background is not None and aug.background_probability > 0
    out = patches
    if mixing or aug.lowpass_probability > 0 or aug.gain_db > 0:  # else no round trip through magnitudes
        # Clipped once, at the end: squared (the mix) a value below zero does no harm, but scaled up by the
        # gain it could take the log below its offset (features of real audio never go below log(offset),
        # but a log-mel from elsewhere may).
        magnitude = tf.exp(patches) - params.log_offset
        if mixing:
            share = tf.cast(chance(0, aug.background_probability), tf.float32)
            magnitude = mix_in_power(magnitude, tf.exp(background) - params.log_offset,
                                     per_example(1, *aug.background_snr_db), share, valid=mask)
        # Low-pass and gain are one factor per example and band, applied in one pass.
        factor = tf.ones([batch, 1, 1, 1])
        if aug.lowpass_probability > 0:
            low, high = (math.log(hz) for hz in aug.lowpass_hz)
            corner = tf.exp(per_example(3, low, high))
            response = lowpass_gain(tf.constant(mel_band_hz(params), tf.float32), corner)
            factor = tf.where(chance(2, aug.lowpass_probability), response, factor)
        if aug.gain_db > 0:
            factor = factor * 10.0 ** (per_example(4, -aug.gain_db, aug.gain_db) / 20.0)
        out = to_log_mel(tf.maximum(magnitude * factor, 0.0), params.log_offset)
    hidden = None
    if aug.time_masks > 0:
        hidden = tf.reshape(_masks(seeds[5], batch * units, aug.time_masks, aug.time_mask_frames, frames),
                            [batch, units, frames, 1])
    if aug.freq_masks > 0:
        freq = tf.reshape(_masks(seeds[6], batch * units, aug.freq_masks, aug.freq_mask_bands, bands),
                          [batch, units, 1, bands])
        hidden = freq if hidden is None else hidden | freq
    if hidden is None:
        return out
    fill = tf.reduce_mean(out, axis=[2, 3], keepdims=True)
    return tf.where(hidden, fill, out)


def augment_example(patches: tf.Tensor, background: tf.Tensor | None, seed: tf.Tensor, aug: AugmentSettings,
                    params: FrontEnd) -> tf.Tensor:
    """One example, (units, patch_frames, bands), augmented as a batch of one (see augment_batch)."""
    return augment_batch(patches[None], None if background is None else background[None], seed, aug, params)[0]


def stateless_gamma(shape: list, seed: tf.Tensor, alpha: float, candidates: int = 8) -> tf.Tensor:
    """Gamma(alpha, 1) draws from stateless ops that XLA compiles (tf.random.stateless_gamma has no XLA kernel).

    Marsaglia and Tsang's method (2000) for Gamma(alpha + 1), boosted to
    alpha by U^(1 / alpha): each draw tries `candidates` proposals and keeps
    the first accepted (each is accepted with probability above 0.95 for
    alpha + 1 >= 1; if none is, about once in 10^10, the draw is the mode d).
    """
    d = alpha + 1.0 - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    z = tf.random.stateless_normal([*shape, candidates], seeds[0])
    u = tf.random.stateless_uniform([*shape, candidates], seeds[1])
    v = tf.pow(tf.maximum(1.0 + c * z, 1e-12), 3.0)
    accepted = (1.0 + c * z > 0) & (tf.math.log(u) < 0.5 * tf.square(z) + d - d * v + d * tf.math.log(v))
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=-1, output_type=tf.int32)
    draw = d * tf.where(tf.reduce_any(accepted, -1), tf.gather(v, first, batch_dims=len(shape)), 1.0)
    return draw * tf.pow(tf.random.stateless_uniform(shape, seeds[2], 1e-12, 1.0), 1.0 / alpha)


def mixup_weights(batch: tf.Tensor | int, seed: tf.Tensor, probability: float, alpha: float) -> tf.Tensor:
    """(batch,) share of each example's own content after mixup: 1 where it is not mixed, else w ~ Beta(alpha,
    alpha) folded to w >= 0.5 (so the example keeps its identity), for a `probability` of the examples."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    a = stateless_gamma([batch], seeds[0], alpha)
    b = stateless_gamma([batch], seeds[1], alpha)
    weight = a / (a + b + 1e-12)
    chosen = tf.random.stateless_uniform([batch], seeds[2]) < probability
    return tf.where(chosen, tf.maximum(weight, 1.0 - weight), 1.0)


def mix_with_previous(x: tf.Tensor, own: tf.Tensor) -> tf.Tensor:
    """Each example of `x` as `own` of itself and 1 - own of the one before it in the batch (tf.roll(x, 1));
    an example of `own` 1 passes unchanged. The shapes stay static, for XLA."""
    w = tf.reshape(tf.cast(own, x.dtype), [-1] + [1] * (len(x.shape) - 1))
    return tf.where(w < 1.0, x + (1.0 - w) * (tf.roll(x, 1, axis=0) - x), x)


def mixup_batch(inputs: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, probability: float,
                alpha: float, loss_weight: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
    """Mix each chosen example with its neighbour in the batch: inputs and targets by the same weight, and
    with `loss_weight` (B,) given also the examples' loss weights (returned third), as the training step does.

    The weight w ~ Beta(alpha, alpha), folded to w >= 0.5 so the example
    keeps its identity; inputs are interpolated as log-mel (as in mixup for
    spectrograms), targets as w * own + (1 - w) * neighbour's.
    """
    own = mixup_weights(tf.shape(targets)[0], seed, probability, alpha)
    mixed = (mix_with_previous(inputs, own), mix_with_previous(targets, own))
    return mixed if loss_weight is None else (*mixed, mix_with_previous(loss_weight, own))


def union_mix(units: tf.Tensor, target: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, probability: float,
              log_offset: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sum each chosen example with the one before it in the batch, as sounds, and unite their labels.

    A `probability` of the examples (batch, units, frames, bands) of log-mel
    are mixed in the power domain with their neighbour (tf.roll(units, 1)),
    both at their own level (m = sqrt(m_a^2 + m_b^2), see mix_in_power); the
    target becomes the union (elementwise maximum) of both targets, as for
    two birds heard together (sigmoid outputs). The mask holds the real
    patches of both. Returns the units, targets, mask and which were mixed.
    """
    chosen = tf.random.stateless_uniform([tf.shape(units)[0]], seed) < probability
    partner = tf.roll(units, 1, axis=0)
    summed = to_log_mel(tf.sqrt(tf.square(to_magnitude(units, log_offset))
                                + tf.square(to_magnitude(partner, log_offset))), log_offset)
    units = tf.where(chosen[:, None, None, None], summed, units)
    target = tf.where(chosen[:, None], tf.maximum(target, tf.roll(target, 1, axis=0)), target)
    mask = mask | (tf.roll(mask, 1, axis=0) & chosen[:, None])
    return units, target, mask, chosen


def batch_seed(example_seeds: tf.Tensor) -> tf.Tensor:
    """The stateless seed of a batch from its examples' seeds ((batch,) int64): the first example's, and the
    batch's size. Each replica's share of a batch holds other examples, so each draws its own randomness; an
    empty share (the last batch split over many replicas) gets a seed too."""
    return tf.stack([tf.reduce_sum(example_seeds[:1]), tf.cast(tf.shape(example_seeds)[0], tf.int64)])


def augment_gathered(batch: dict[str, tf.Tensor], target: tf.Tensor, aug: AugmentSettings,
                     params: FrontEnd) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """A gathered batch as the model trains on it: ({units float32, mask}, targets), augmented by `aug`.

    `batch` is what the CPU side of the input gathers (jibjib.training.inputs):
    `units` (batch, units, frames, bands) of log-mel in float16 or float32,
    their `mask`, each example's `seed` and, where background recordings are
    mixed in, a `background` of the units' shape, and with weak negatives
    each example's loss `weight`. Padded units become silence
    (params.silence) whatever the input held. Then the background mix,
    distance, gain and masks (augment_batch), then mixup (a mixed sequence's
    mask holds the real patches of both; a sequence not mixed keeps its own),
    then the union mix (union_mix; a mixed example's weight is the larger of
    both). This runs inside the training step, on the device that trains.
    """
    units = tf.cast(batch["units"], tf.float32)
    mask = batch["mask"]
    units = tf.where(mask[:, :, None, None], units, params.silence)
    weight = {"weight": batch["weight"]} if "weight" in batch else {}
    background = batch.get("background")
    mixing = background is not None and aug.background_probability > 0
    if not (mixing or aug.changes_examples or aug.mixup_probability > 0 or aug.union_mix_probability > 0):
        return {"units": units, "mask": mask, **weight}, target
    seeds = tf.random.experimental.stateless_split(batch_seed(batch["seed"]), 2)
    if mixing or aug.changes_examples:
        units = augment_batch(units, tf.cast(background, tf.float32) if mixing else None, seeds[0], aug, params,
                              mask=mask)
    if aug.mixup_probability > 0:
        own = mixup_weights(tf.shape(units)[0], seeds[1], aug.mixup_probability, aug.mixup_alpha)
        units, target = mix_with_previous(units, own), mix_with_previous(target, own)
        mask = mask | (tf.roll(mask, 1, axis=0) & (own < 1.0)[:, None])
        if weight:
            weight = {"weight": mix_with_previous(weight["weight"], own)}
    if aug.union_mix_probability > 0:
        # Folded from the mixup's seed: the steps before draw as they did before the union mix existed.
        union_seed = tf.random.experimental.stateless_fold_in(seeds[1], 1)
        units, target, mask, chosen = union_mix(units, target, mask, union_seed, aug.union_mix_probability,
                                                params.log_offset)
        if weight:
            w = weight["weight"]
            weight = {"weight": tf.where(chosen, tf.maximum(w, tf.roll(w, 1, axis=0)), w)}
    return {"units": units, "mask": mask, **weight}, target
