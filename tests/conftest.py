"""Shared fixtures: small generated WAV trees and a way to run the workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

REPO = Path(__file__).resolve().parents[1]
# Tests live in one folder per stage (tests/<stage>/, as jibjib/<stage>/) and some share helpers across
# stages (a workflow test's dry-run parser, a training fixture): every folder is importable by module name,
# whatever order pytest collects them in.
sys.path[:0] = [str(folder) for folder in sorted(Path(__file__).parent.iterdir())
                if folder.is_dir() and any(folder.glob("test_*.py"))]


def chirp(seconds: float, sample_rate: int, f0: float = 2000.0, f1: float = 6000.0, seed: int = 0) -> np.ndarray:
    """A bird-like up-sweep repeated every half second, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase_t = t % 0.5
    freq = f0 + (f1 - f0) * phase_t / 0.5
    tone = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * (phase_t < 0.3)
    return (0.5 * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sample_rate, subtype=subtype)
    return path


def write_audio(path: Path, samples: np.ndarray, sample_rate: int, format: str, subtype: str | None = None,
                **options) -> Path:
    """FLAC, OGG (subtype VORBIS or OPUS) or MP3 through libsndfile, written in blocks of 16384 frames:
    one large write to Vorbis crashes libsndfile.  `options`: compression_level, bitrate_mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with soundfile.SoundFile(str(path), "w", sample_rate, channels, subtype, format=format, **options) as f:
        for start in range(0, samples.shape[0], 16384):
            f.write(samples[start:start + 16384])
    return path


def feature_command_peak_rss(data_dir: Path, label: str, out: Path) -> int:
    """Peak resident memory (bytes) of `jibjib features` on one species folder, in its own process.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking process (pytest) through exec,
    so a child smaller than pytest would report pytest's size.
    """
    code = (
        "import re, sys; from jibjib.cli import main; "
        f"rc = main(['features', '--data-dir', {str(data_dir)!r}, '--label', {label!r}, "
        f"'--features-dir', {str(out / 'features')!r}, '--manifest', {str(out / label)!r} + '.tsv']); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env=REPO_ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1]) * 1024  # kB


def make_tree(root: Path, species: dict[str, int], seconds: float = 2.0, sample_rate: int = 22050) -> Path:
    """`root/<label>/<label>-<rec>_<k>.wav`: `species[label]` recordings of two slices each."""
    for s_index, (label, n_recordings) in enumerate(species.items()):
        for rec in range(n_recordings):
            for k in (1, 2):
                samples = chirp(seconds, sample_rate, f0=1500 + 700 * s_index, seed=rec * 10 + k)
                write_wav(root / label / f"{label}-{100 + rec}_{k}.wav", samples, sample_rate)
    return root


# Subprocesses import this checkout's jibjib.
REPO_ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# The data-preparation stages: what the workflow tests run when training is not their subject.
PREPARATION_TARGETS = ["results/labels.tsv", "results/split.tsv", "results/qc/files.tsv"]


class WritesFile:
    """Unpickling this calls open(target, "w"): the file appears if the pickle runs."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def snakemake_command(workdir: Path, *args: str, config: dict | None = None) -> list[str]:
    """The command that runs the repository's workflow in `workdir`, `config` overriding config.yaml
    (run it with env=REPO_ENV)."""
    overrides = workdir / ".test-config.yaml"
    overrides.write_text(yaml.safe_dump(json.loads(json.dumps(config or {}, default=str))))
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(REPO / "config.yaml"), str(overrides),
        "--cores", "2", *args,
    ]


def run_snakemake(workdir: Path, *args: str, config: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir`, `config` overriding config.yaml."""
    command = snakemake_command(workdir, *args, config=config)
    result = subprocess.run(command, capture_output=True, text=True, env=REPO_ENV, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "birds", {"Alpha_one": 3, "Beta_two": 3})


# A tiny run of the whole workflow, shared by the tests of evaluation, export, predict and analyze.
SPECIES = {"Alpha_one": 4, "Beta_two": 4, "Gamma_three": 4}
# Softmax outputs (not the sigmoid default): the serving tests check that a softmax model's scores sum to 1.
TINY = {
    "split": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "train": {"shuffle_buffer": 64},
    "vggish": {"epochs": 1, "batch_size": 8, "trainable": "head", "head_units": 8, "multi_label": False},
    "convlstm": {"epochs": 2, "batch_size": 4, "seq_len": 2, "conv_filters": [4], "lstm_units": 8,
                 "dense_units": 8, "dropout": 0.0, "multi_label": False},
}


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The whole workflow, both models (TINY settings), on 16 kHz files (so the waveform path needs no resampling),
    under umask 022 and with a folder that a killed export left behind."""
    workdir = tmp_path_factory.mktemp("workflow")
    make_tree(workdir / "birds", SPECIES, seconds=2.0, sample_rate=16000)
    (workdir / "results" / "export" / "vggish" / ".1.tmp-999999" / "variables").mkdir(parents=True)
    umask = os.umask(0o022)
    try:
        run_snakemake(workdir, config={**TINY, "data_dir": str(workdir / "birds")})
    finally:
        os.umask(umask)
    return workdir


@pytest.fixture(scope="session")
def serving_exports(tiny_workflow: Path, tmp_path_factory) -> dict[str, Path]:
    """Both tiny models exported again with export.tflite (its int8 analysis file checked on the val split's
    features) and export.legacy_serving on (by the jibjib command, as the rule calls it), beside the tiny workflow's own default exports. The two run at once: VGGish's
    TFLite conversion is most of the wait."""
    out = tmp_path_factory.mktemp("serving_exports")
    results = tiny_workflow / "results"
    jobs = {}
    for model in ("vggish", "convlstm"):
        command = [sys.executable, "-m", "jibjib", "export", "--model-dir", str(results / "models" / model),
                   "--eval-dir", str(results / "eval" / model), "--labels", str(results / "labels.tsv"),
                   "--split", str(results / "split.tsv"), "--out", str(out / model), "--version", "1",
                   "--tflite", "--features-dir", str(results / "features"), "--legacy-serving"]
        jobs[model] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=REPO_ENV, cwd=tiny_workflow)
    for model, job in jobs.items():
        _, err = job.communicate(timeout=900)
        assert job.returncode == 0, err[-3000:]
    return {model: out / model / "1" for model in jobs}


def pack_files(root: Path) -> "PackedFeatures":
    """The packed features of every npz below root/features (one shard), for the packed training input."""
    from jibjib.packing import PackedFeatures, pack_shard
    from jibjib.features.qc import QCRow, write_manifest

    features = root / "features"
    paths = sorted(str(f.relative_to(features).with_suffix(".wav")) for f in features.rglob("*.npz"))
    write_manifest(root / "manifest.tsv", [QCRow(path=p, label=p.split("/")[0], status="processed") for p in paths])
    pack_shard(root / "manifest.tsv", features, root / "packed" / "shard-00.npy", root / "packed" / "shard-00.tsv")
    return PackedFeatures.open([root / "packed" / "shard-00.tsv"])


@pytest.fixture(autouse=True)
def fresh_global_seed() -> None:
    """Every test starts from the same TensorFlow global seed, whatever ran before it in this process.

    TensorFlow combines an op's own seed with the global one, which a training run sets: without this a
    test's random draws would depend on which tests ran earlier (and on how pytest orders the folders).
    Only where TensorFlow is already loaded: the many tests without it do not pay its import.
    """
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(0)
