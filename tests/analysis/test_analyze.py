"""`jibjib analyze`: windows, times, tables, thresholds, formats, reuse and memory on long files.

Most tests use exports of hand-built models whose scores are known: the
"Tone" class scores high where the log-mel band at 3 kHz is loud, so a test
that puts a 3 kHz tone at known times knows where the detections must be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import soundfile

from conftest import REPO_ENV, TINY, chirp, run_snakemake, write_audio
from jibjib.analysis.analyze import ANALYSED, REJECTED, REUSED, analyze_files
from jibjib.analysis.analyzer import Analyzer
from jibjib.analysis.inputs import find_inputs
from jibjib.analysis.tables import RAVEN_COLUMNS
from jibjib.serving.export import save_export, window_card
from jibjib.features.frontend import hertz_to_mel
from jibjib.core.params import VGGISH, WindowGrid

LABELS = ["Other", "Tone"]
TONE_HZ = 3000.0


def tone_band() -> int:
    """The mel band whose centre is nearest 3 kHz."""
    edges = np.linspace(hertz_to_mel(VGGISH.fmin_hz), hertz_to_mel(VGGISH.fmax_hz), VGGISH.mel_bands + 2)
    return int(np.argmin(np.abs(edges[1:-1] - hertz_to_mel(TONE_HZ))))


def tone_model(seq_len: int | None) -> keras.Model:
    """Logits (0, 2 * (mean log-mel of the 3 kHz band + 1)): silence about -7, a loud tone about +8."""
    band = tone_band()
    frames, bands = VGGISH.patch_frames, VGGISH.mel_bands
    if seq_len is None:
        patches = keras.Input((frames, bands), name="patches")
        inputs, level = patches, keras.layers.Lambda(lambda x: keras.ops.mean(x[..., band], axis=1))(patches)
    else:
        patches = keras.Input((seq_len, frames, bands), name="patches")
        mask = keras.Input((seq_len,), dtype="bool", name="mask")
        inputs = [patches, mask]
        level = keras.layers.Lambda(
            lambda t: keras.ops.sum(keras.ops.mean(t[0][..., band], axis=2) * keras.ops.cast(t[1], "float32"), axis=1)
            / keras.ops.maximum(1.0, keras.ops.sum(keras.ops.cast(t[1], "float32"), axis=1)))([patches, mask])
    logits = keras.layers.Lambda(lambda v: keras.ops.stack([keras.ops.zeros_like(v), 2.0 * (v + 1.0)], axis=-1))(level)
    return keras.Model(inputs, logits)


def write_tone_export(out: Path, seq_len: int | None, window_thresholds: list[float] | None = None,
                      analysis_windows: np.ndarray | None = None) -> Path:
    """The Tone model's export; with `analysis_windows` (val log-mel windows) also its analysis TFLite files."""
    scratch = out.parent / f".{out.name}-assets"
    scratch.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"class_id": [0, 1], "label": LABELS, "external_id": ["o-1", "t-2"]}).to_csv(
        scratch / "labels.tsv", sep="\t", index=False)
    thresholds = pd.DataFrame({"label": LABELS, "threshold": [0.5, 0.5]})
    if window_thresholds is not None:
        thresholds["window_threshold"] = window_thresholds
    thresholds.to_csv(scratch / "thresholds.tsv", sep="\t", index=False, na_rep="nan")
    grid = WindowGrid.for_model(VGGISH, seq_len or 1)
    card = {"model": "tone", "frontend": {**VGGISH.__dict__, "fingerprint": VGGISH.fingerprint()},
            "window": window_card(grid, VGGISH)}
    model = tone_model(seq_len)
    save_export(out, model, LABELS, scratch / "labels.tsv", scratch / "thresholds.tsv", card, VGGISH,
                beside=analysis_files(model, card, scratch, analysis_windows, multi_label=False))
    return out


def analysis_files(model: keras.Model, card: dict, scratch: Path, windows: np.ndarray | None,
                   multi_label: bool) -> dict[str, Path]:
    """With val `windows`, the analysis TFLite files of a one-patch model in `scratch` and the card's section
    for them, as `jibjib export --tflite` writes them; {} without."""
    if windows is None:
        return {}
    from jibjib.serving import tflite

    card["tflite"] = {"analysis": tflite.convert_for_analysis(model, VGGISH, None, multi_label, scratch, windows)}
    return {name: scratch / name for name in card["tflite"]["analysis"]["files"]}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {"patch": write_tone_export(root / "patch" / "1", None, [float("nan"), 0.5]),
            "sequence": write_tone_export(root / "sequence" / "1", 3, [float("nan"), 0.5])}


def soundscape(seconds: float, rate: int, tones: list[tuple[float, float]], channels: int = 1,
               seed: int = 0) -> np.ndarray:
    """Faint noise with a loud 3 kHz tone over each (start, end) span."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.001 * rng.standard_normal(t.size)
    for start, end in tones:
        inside = (t >= start) & (t < end)
        signal[inside] += 0.5 * np.sin(2 * np.pi * TONE_HZ * t[inside])
    signal = signal.astype(np.float32)
    return signal if channels == 1 else np.stack([signal] * channels, axis=1)


def analyze_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jibjib", "analyze", *args], capture_output=True, text=True,
                          env={**REPO_ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=600)


def test_windows_fall_where_the_grid_says(exports: dict[str, Path], tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", soundscape(10.0, 16000, []), 16000, "WAV")
    vggish, sequence = Analyzer(exports["patch"]), Analyzer(exports["sequence"], hop_seconds=1.0)
    assert (vggish.window_seconds, vggish.hop_seconds) == pytest.approx((0.96, 0.48))
    assert (sequence.window_seconds, sequence.hop_seconds) == pytest.approx((2.88, 1.0))
    scores = vggish.score_file(path)
    # 998 frames of 10 ms: whole windows start every 48 frames up to frame 998 - 96.
    assert scores.start.size == 1 + (998 - 96) // 48 == 19
    np.testing.assert_allclose(scores.start, np.arange(19) * 0.48)
    # A window's 96 frames start 10 ms apart and each reads 25 ms: it covers 0.975 s of audio, not 0.96 s.
    np.testing.assert_allclose(scores.end, scores.start + 0.975)
    assert vggish.grid.span_seconds == pytest.approx(0.975) and sequence.grid.span_seconds == pytest.approx(2.895)
    assert sequence.score_file(path).start.size == 1 + (998 - 288) // 100


@pytest.mark.parametrize("kind", ["patch", "sequence"])
def test_detections_are_where_the_calls_are(exports: dict[str, Path], tmp_path: Path, kind: str) -> None:
    tones = [(10.0, 12.0), (30.0, 33.0)]
    audio = tmp_path / "in"
    write_audio(audio / "site" / "long.flac", soundscape(45.0, 44100, tones, channels=2), 44100, "FLAC")
    analyzer = Analyzer(exports[kind])
    (result,) = analyze_files(analyzer, find_inputs([audio]))
    assert result.status == ANALYSED and result.relative == "site/long.flac"
    s = analyzer.score_file(audio / "site" / "long.flac")
    assert result.windows == s.scores.shape[0]
    hit = s.scores[:, 1] >= 0.5
    # Every window mostly inside a tone is detected, every window clear of both is not.
    for start, end, detected in zip(s.start, s.end, hit):
        inside = max(max(0.0, min(end, b) - max(start, a)) for a, b in tones) / (end - start)
        if inside >= 0.75:
            assert detected, (start, end)
        if inside == 0.0:
            assert not detected, (start, end)


def test_tables_merge_and_thresholds(exports: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "in"
    write_audio(audio / "one.wav", soundscape(20.0, 32000, [(5.0, 7.0)]), 32000, "WAV")
    write_audio(audio / "sub" / "two.wav", soundscape(20.0, 16000, [(2.0, 3.0), (12.0, 14.0)]), 16000, "WAV")
    out = tmp_path / "out"
    done = analyze_cli("--model", str(exports["patch"]), "--out", str(out), "--merge", str(audio))
    assert done.returncode == 0, done.stderr
    assert all(line.startswith(("analyze", "jibjib")) for line in done.stderr.splitlines()), done.stderr
    table = pd.read_csv(out / "detections.tsv", sep="\t", dtype={"external_id": str})
    assert list(table.columns) == ["file", "start", "end", "label", "score", "site", "recorded_at", "external_id"]
    # "Other" has no window threshold (NaN): never detected; one merged row per tone.
    assert set(table["label"]) == {"Tone"} and set(table["external_id"]) == {"t-2"}
    assert table["file"].tolist() == ["one.wav", "sub/two.wav", "sub/two.wav"]
    for (_, row), (start, end) in zip(table.iterrows(), [(5.0, 7.0), (2.0, 3.0), (12.0, 14.0)]):
        assert start - 0.96 < row["start"] <= start + 0.48 and end - 0.48 <= row["end"] < end + 0.96, row
    raven = pd.read_csv(out / "sub" / "two.jibjib.selections.txt", sep="\t")
    assert tuple(raven.columns) == RAVEN_COLUMNS and raven["Selection"].tolist() == [1, 2]
    assert raven["Begin Time (s)"].tolist() == table["start"].tolist()[1:]
    assert set(raven["Low Freq (Hz)"]) == {125.0} and set(raven["High Freq (Hz)"]) == {7500.0}
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False)
    assert files["status"].tolist() == ["analysed", "analysed"] and files["detections"].tolist() == [1, 2]

    # Without merging, one row per window; --min-score applies to every species.
    unmerged = tmp_path / "unmerged"
    assert analyze_cli("--model", str(exports["patch"]), "--out", str(unmerged), str(audio)).returncode == 0
    rows = pd.read_csv(unmerged / "detections.tsv", sep="\t")
    assert len(rows) > 3 and (rows["end"] - rows["start"]).round(3).eq(0.975).all()
    everything = tmp_path / "everything"
    assert analyze_cli("--model", str(exports["patch"]), "--out", str(everything), "--min-score", "0.5",
                       "--format", "audacity", str(audio / "one.wav")).returncode == 0
    labels = (everything / "one.jibjib.labels.txt").read_text().splitlines()
    assert {line.split("\t")[2].split(" ")[0] for line in labels} == {"Other", "Tone"}


def test_formats_short_and_broken_files(exports: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "in"
    write_audio(audio / "stereo.flac", soundscape(8.0, 44100, [(3.0, 5.0)], channels=2), 44100, "FLAC")
    write_audio(audio / "lossy.mp3", soundscape(8.0, 32000, [(3.0, 5.0)]), 32000, "MP3")
    write_audio(audio / "plain.wav", soundscape(8.0, 16000, [(3.0, 5.0)]), 16000, "WAV")
    write_audio(audio / "short.wav", soundscape(0.5, 16000, []), 16000, "WAV")
    (audio / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (audio / "notes.txt").write_text("not audio")
    (audio / "twice.flac").write_bytes((audio / "stereo.flac").read_bytes())
    (audio / "twice.wav").write_bytes((audio / "plain.wav").read_bytes())  # would share twice.selections.txt
    out = tmp_path / "out"
    done = analyze_cli("--model", str(exports["patch"]), "--out", str(out), "--merge", str(audio))
    assert done.returncode == 1  # some files could not be analysed
    errors = [line for line in done.stderr.splitlines() if line.startswith("jibjib analyze:")]
    assert len(errors) == 3 and any("short.wav: too_short" in e for e in errors), done.stderr
    assert any("twice.wav: duplicate_name" in e for e in errors), done.stderr
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False).set_index("file")
    assert files.loc["short.wav", "status"] == "rejected" and files.loc["broken.wav", "status"] == "rejected"
    assert files.loc["notes.txt", "status"] == "ignored"
    assert int(files.loc["stereo.flac", "channels"]) == 2 and int(files.loc["lossy.mp3", "sample_rate"]) == 32000
    table = pd.read_csv(out / "detections.tsv", sep="\t")
    assert sorted(table["file"]) == ["lossy.mp3", "plain.wav", "stereo.flac", "twice.flac"]
    # The MP3 decoder's delay shifts it by a few ms at most.
    assert table["start"].between(2.0, 3.5).all() and table["end"].between(5.0, 6.0).all()


def test_scores_are_reused_only_while_everything_is_the_same(exports: dict[str, Path], tmp_path: Path) -> None:
    audio, scores = tmp_path / "in", tmp_path / "scores"
    path = write_audio(audio / "a.wav", soundscape(6.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    write_audio(audio / "b.wav", soundscape(6.0, 16000, []), 16000, "WAV")
    analyzer = Analyzer(exports["patch"])
    statuses = lambda a: [r.status for r in analyze_files(a, find_inputs([audio]), scores)]  # noqa: E731
    assert statuses(analyzer) == [ANALYSED, ANALYSED]
    assert statuses(analyzer) == [REUSED, REUSED]
    write_audio(path, soundscape(6.0, 16000, [(3.0, 4.0)]), 16000, "WAV")  # same length, new content
    assert statuses(analyzer) == [ANALYSED, REUSED]
    assert statuses(Analyzer(exports["patch"], hop_seconds=0.96)) == [ANALYSED, ANALYSED]
    assert statuses(Analyzer(exports["sequence"], hop_seconds=0.96)) == [ANALYSED, ANALYSED]
    # A damaged score file is analysed again, not trusted.
    (scores / "a.npz").write_bytes(b"PK\x03\x04 damaged")
    assert statuses(Analyzer(exports["sequence"], hop_seconds=0.96)) == [ANALYSED, REUSED]


def test_the_windows_signature_scores_as_analyze_does(exports: dict[str, Path], tmp_path: Path) -> None:
    import tensorflow as tf

    samples = soundscape(7.0, 16000, [(2.0, 4.0)])
    path = write_audio(tmp_path / "a.wav", samples, 16000, "WAV", subtype="FLOAT")
    for kind in ("patch", "sequence"):
        analyzer = Analyzer(exports[kind], hop_seconds=0.5)
        mine = analyzer.score_file(path)
        served = tf.saved_model.load(str(exports[kind])).signatures["windows"](
            waveform=tf.constant(samples[None]), hop_seconds=tf.constant(0.5))
        np.testing.assert_allclose(served["start"].numpy(), mine.start)
        np.testing.assert_allclose(served["end"].numpy(), mine.start + analyzer.grid.span_seconds)
        np.testing.assert_allclose(np.minimum(served["end"].numpy(), 7.0), mine.end)
        # analyze keeps float16 scores: steps of 0.0005 between 0.5 and 1.
        np.testing.assert_allclose(served["scores"].numpy()[0], mine.scores, atol=2.5e-4)


def test_memory_stays_flat_on_a_long_file(exports: dict[str, Path], tmp_path: Path) -> None:
    """Peak RSS of analyze on 40 minutes at 48 kHz against 4 minutes: streamed, so nearly the same."""

    def long_file(path: Path, minutes: int) -> Path:
        with soundfile.SoundFile(path, "w", 48000, 1, "PCM_16") as f:
            for minute in range(minutes):
                f.write(soundscape(60.0, 48000, [(20.0, 25.0)], seed=minute))
        return path

    def peak_rss(path: Path) -> int:
        code = ("import resource, sys; from jibjib.cli import main; rc = main(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        done = subprocess.run([sys.executable, "-c", code, "analyze", "--model", str(exports["patch"]),
                               "--out", str(tmp_path / path.stem), str(path)],
                              capture_output=True, text=True, env=REPO_ENV, timeout=900)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1]) * 1024

    short, long = peak_rss(long_file(tmp_path / "short.wav", 4)), peak_rss(long_file(tmp_path / "long.wav", 40))
    # The 40-minute file decoded whole would be 460 MB of float32 at 48 kHz.
    assert long - short < 60e6, (short, long)
    table = pd.read_csv(tmp_path / "long" / "detections.tsv", sep="\t")
    assert len(table) >= 40 and table["start"].max() > 39 * 60


@pytest.fixture
def workflow_copy(tiny_workflow: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run (times kept), so that these configs leave the shared run as it was."""
    workdir = tmp_path / "workflow"
    shutil.copytree(tiny_workflow, workdir, symlinks=True)
    return workdir


def test_the_workflow_stage_reanalyses_only_what_changed(workflow_copy: Path) -> None:
    workdir = workflow_copy
    field = workdir / "field"
    write_audio(field / "a.wav", soundscape(4.0, 22050, [(1.0, 2.0)]), 22050, "WAV")
    write_audio(field / "deep" / "b.flac", soundscape(3.0, 16000, []), 16000, "FLAC")
    (field / "notes.txt").write_text("not audio")
    # Recorder archives are often folders of links: one to a recording elsewhere, one to nothing.
    (field / "linked.wav").symlink_to(write_audio(workdir / "archive" / "x.wav", soundscape(3.0, 16000, []), 16000,
                                                  "WAV"))
    (field / "gone.wav").symlink_to(workdir / "archive" / "deleted.wav")
    config = {**TINY, "data_dir": str(workdir / "birds"),
              "analyze": {"input_dir": str(field), "shards": 3, "min_score": 0.0, "models": ["vggish"]}}
    out = workdir / "results" / "analysis" / "vggish"
    trained = (workdir / "results" / "models" / "vggish" / "train.json").stat().st_mtime_ns

    run_snakemake(workdir, config=config)
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False).set_index("file")
    assert files["status"].to_dict() == {"a.wav": "analysed", "deep/b.flac": "analysed", "gone.wav": "rejected",
                                         "linked.wav": "analysed", "notes.txt": "ignored"}
    assert files.loc["gone.wav", "detail"].startswith("broken symbolic link to ")
    detections = pd.read_csv(out / "detections.tsv", sep="\t")
    # min_score 0: every window of every file for each of the three species.
    windows = {name: int(files.loc[name, "windows"]) for name in ("a.wav", "deep/b.flac", "linked.wav")}
    assert detections.groupby("file").size().to_dict() == {k: 3 * v for k, v in windows.items()}
    assert (out / "deep" / "b.jibjib.selections.txt").is_file() and (out / "scores" / "deep" / "b.npz").is_file()

    def manifests() -> dict[str, dict[str, str]]:
        return {p.name: pd.read_csv(p, sep="\t", keep_default_na=False).set_index("file")["status"].to_dict()
                for p in sorted((out / "shards").glob("*.tsv")) if not p.name.endswith(".detections.tsv")}

    before = manifests()
    write_audio(field / "c.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    log = run_snakemake(workdir, config=config).stderr
    after = manifests()
    changed = {name for name in after if after[name] != before.get(name)}
    assert len(changed) == 1, log  # only the new file's shard ran, and in it only the new file was analysed
    (name,) = changed
    assert after[name]["c.wav"] == "analysed"
    assert all(status in ("reused", "ignored") for file, status in after[name].items()
               if file not in ("c.wav", "gone.wav"))
    assert (workdir / "results" / "models" / "vggish" / "train.json").stat().st_mtime_ns == trained

    # A checkout that only touches modification times reruns nothing.
    for path in field.rglob("*"):
        if not path.is_symlink():
            os.utime(path)
    assert "Nothing to be done" in run_snakemake(workdir, config=config).stderr

    # A removed recording takes its scores and its table with it.
    (field / "deep" / "b.flac").unlink()
    run_snakemake(workdir, config=config)
    assert not (out / "deep" / "b.jibjib.selections.txt").exists() and not (out / "scores" / "deep" / "b.npz").exists()
    assert "deep/b.flac" not in set(pd.read_csv(out / "detections.tsv", sep="\t")["file"])


def test_the_workflow_evaluates_annotated_soundscapes(workflow_copy: Path) -> None:
    workdir = workflow_copy
    scapes = workdir / "scapes"
    samples = soundscape(20.0, 16000, [])
    samples[4 * 16000 : 6 * 16000] += chirp(2.0, 16000, f0=1500)  # Alpha_one's song in the tiny set
    write_audio(scapes / "site.wav", samples, 16000, "WAV")
    (scapes / "site.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\tSpectrogram 1\t1\t4.0\t6.0\tAlpha_one\n")
    run_snakemake(workdir, config={**TINY, "data_dir": str(workdir / "birds"), "models": ["vggish"],
                                   "soundscapes": {"audio_dir": str(scapes)}})
    eval_dir = workdir / "results" / "eval" / "vggish"
    summary = json.loads((eval_dir / "soundscapes.json").read_text())
    assert summary["n_files"] == 1 and summary["calls"] == 1
    report = (eval_dir / "report.md").read_text()
    assert report.startswith((eval_dir / "test_report.md").read_text().rstrip("\n"))
    assert "## Annotated soundscapes" in report and (eval_dir / "soundscape.png").stat().st_size > 10_000
    assert (eval_dir / "soundscapes" / "site.jibjib.selections.txt").is_file()


def test_an_export_without_window_thresholds_is_refused_before_any_work(tmp_path: Path) -> None:
    old = write_tone_export(tmp_path / "old" / "1", None, window_thresholds=None)
    audio = write_audio(tmp_path / "a.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    done = analyze_cli("--model", str(old), "--out", str(tmp_path / "out"), str(audio))
    assert done.returncode == 1 and not (tmp_path / "out").exists()
    (line,) = done.stderr.strip().splitlines()
    assert "window_threshold" in line and "minimum score" in line, line
    # A minimum score needs no thresholds.
    assert analyze_cli("--model", str(old), "--out", str(tmp_path / "out"), "--min-score", "0.9",
                       str(audio)).returncode == 0


def test_hops_that_float32_rounds_differently_give_one_grid(exports: dict[str, Path]) -> None:
    import tensorflow as tf

    samples = soundscape(4.0, 16000, [])
    served = tf.saved_model.load(str(exports["patch"])).signatures["windows"]
    for hop in (0.235, 0.575, 1.175):
        grid = WindowGrid.for_model(VGGISH, 1, hop)
        start = served(waveform=tf.constant(samples[None]), hop_seconds=tf.constant(hop))["start"].numpy()
        np.testing.assert_allclose(start, grid.times(0, start.size)[0])
        assert start.size == grid.count(VGGISH.n_frames(samples.size))


def test_inputs_and_options_that_cannot_work_get_one_line(exports: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no audio")
    audio = write_audio(tmp_path / "a.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    for args, expected in [(["--hop", "inf", str(audio)], "--hop: hop must be a positive number"),
                           (["--hop", "0", str(audio)], "--hop: hop must be a positive number"),
                           ([str(tmp_path / "empty"), str(tmp_path / "texts")], "no audio files")]:
        done = analyze_cli("--model", str(exports["patch"]), "--out", str(tmp_path / "out"), *args)
        (line,) = done.stderr.strip().splitlines()
        assert done.returncode == 1 and expected in line, done.stderr


def test_several_folders_keep_their_names_apart(tmp_path: Path) -> None:
    for site in ("siteA", "siteB"):
        write_audio(tmp_path / site / "20260501_0500.wav", soundscape(2.0, 16000, []), 16000, "WAV")
    names = [name for _, name in find_inputs([tmp_path / "siteA", tmp_path / "siteB", tmp_path / "siteA"])]
    assert names == ["siteA/20260501_0500.wav", "siteB/20260501_0500.wav"]
    assert [name for _, name in find_inputs([tmp_path / "siteA"])] == ["20260501_0500.wav"]


def test_a_failing_model_call_stops_the_front_end_instead_of_hanging(exports: dict[str, Path], tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", soundscape(30.0, 16000, []), 16000, "WAV")
    analyzer = Analyzer(exports["patch"])
    analyzer.batch_windows = 2  # many small batches: the hand-off fills while the model call fails

    def broken(windows: np.ndarray) -> np.ndarray:
        raise RuntimeError("model failed")

    analyzer.score_log_mel_windows = broken
    with pytest.raises(RuntimeError, match="model failed"):
        analyzer.score_file(path)
