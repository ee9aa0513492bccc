"""`jibjib analyze` at scale: memory that does not grow with the files, resuming without hashing again,
compact score files, recordings behind symbolic links, and tables that never replace someone else's.

The exports are hand-built (see test_analyze): a 250-class one whose scores are
fixed by its seeded weights, and the "Tone" model of test_analyze.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, REPO_ENV, write_audio
from test_analyze import analysis_files, analyze_cli, soundscape, write_tone_export
from jibjib.analysis import analyze as analyze_module
from jibjib.analysis.analyze import ANALYSED, REUSED, analyze_files
from jibjib.analysis.analyzer import Analyzer
from jibjib.analysis.inputs import find_inputs
from jibjib.analysis.scores import load_scores
from jibjib.core import fsutil
from jibjib.core.params import VGGISH, WindowGrid
from jibjib.serving.export import save_export, window_card

CLASSES = 250


def wide_export(out: Path, classes: int = CLASSES, analysis_windows: np.ndarray | None = None) -> Path:
    """Mean log-mel of each band -> Dense(classes), seeded: sigmoid scores, of which about 0.1 % reach the
    window threshold of 0.998 on these tests' noise."""
    keras.utils.set_random_seed(7)
    patches = keras.Input((VGGISH.patch_frames, VGGISH.mel_bands), name="patches")
    level = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=1))(patches)
    model = keras.Model(patches, keras.layers.Dense(classes)(level))
    labels = [f"Species_{i:03d}" for i in range(classes)]
    scratch = out.parent / f".{out.name}-assets"
    scratch.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"class_id": range(classes), "label": labels}).to_csv(scratch / "labels.tsv", sep="\t", index=False)
    pd.DataFrame({"label": labels, "threshold": 0.5, "window_threshold": 0.998}).to_csv(
        scratch / "thresholds.tsv", sep="\t", index=False)
    card = {"model": "wide", "frontend": {**VGGISH.__dict__, "fingerprint": VGGISH.fingerprint()},
            "window": window_card(WindowGrid.for_model(VGGISH, 1), VGGISH)}
    save_export(out, model, labels, scratch / "labels.tsv", scratch / "thresholds.tsv", card, VGGISH,
                multi_label=True, beside=analysis_files(model, card, scratch, analysis_windows, multi_label=True))
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {"wide": wide_export(root / "wide" / "1"),
            "tone": write_tone_export(root / "tone" / "1", None, [float("nan"), 0.5])}


def peak_rss(*args: str) -> int:
    """Peak resident memory (bytes, VmHWM) of one `jibjib` command in its own process (see conftest)."""
    code = ("import re, sys; from jibjib.cli import main; rc = main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          env={**REPO_ENV, "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1]) * 1024


def test_peak_memory_does_not_grow_with_the_number_of_files(exports: dict[str, Path], tmp_path: Path) -> None:
    """One shard job and the tables job over 1,000 files against 100: the same peak within 10 %.

    Each 2 s file at a hop of one frame has 103 windows of 250 scores: kept until the end, as before, the
    1,000 files' scores alone would be about 100 MB more than the 100 files'.
    """
    one = write_audio(tmp_path / "one.wav", soundscape(2.0, 16000, [], seed=1), 16000, "WAV")
    peaks = {}
    for count in (100, 1000):
        folder = tmp_path / f"in{count}"
        folder.mkdir()
        for k in range(count):
            os.link(one, folder / f"rec{k:04d}.wav")
        out = tmp_path / f"out{count}"
        shard = ["--manifest", str(out / "shards" / "shard-0.tsv"),
                 "--detections", str(out / "shards" / "shard-0.detections.tsv")]
        job = peak_rss("analyze", "--model", str(exports["wide"]), "--out", str(out), "--scores", str(out / "scores"),
                       "--hop", "0.01", "--threads", "1", *shard, str(folder))
        tables = peak_rss("analysis-tables", "--manifests", shard[1], "--detections", shard[3], "--out", str(out),
                          "--scores", str(out / "scores"), "--remove-other-scores")
        peaks[count] = (job, tables)
        files = pd.read_csv(out / "files.tsv", sep="\t")
        assert len(files) == count and files["status"].eq("analysed").all() and files["windows"].eq(103).all()
    (job_100, tables_100), (job_1000, tables_1000) = peaks[100], peaks[1000]
    assert job_1000 < 1.1 * job_100 and tables_1000 < 1.1 * tables_100, peaks
    detections = pd.read_csv(tmp_path / "out1000" / "detections.tsv", sep="\t")
    assert len(detections) == 10 * len(pd.read_csv(tmp_path / "out100" / "detections.tsv", sep="\t")) > 0


def _no_hashing(monkeypatch) -> None:
    def refuse(path, *args):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(analyze_module.fsutil, "sha256_or", refuse)


def test_an_interrupted_run_resumes_without_hashing_again(exports: dict[str, Path], tmp_path: Path,
                                                          monkeypatch) -> None:
    audio, scores = tmp_path / "in", tmp_path / "scores"
    for k in range(6):
        write_audio(audio / f"f{k}.flac", soundscape(3.0, 44100, [(1.0, 2.0)], seed=k), 44100, "FLAC")
    analyzer = Analyzer(exports["tone"])
    done: list[str] = []

    def killed_after_four(relative: str, window_scores) -> tuple[int, str]:
        if len(done) == 4:
            raise KeyboardInterrupt
        done.append(relative)
        return 0, ""

    with pytest.raises(KeyboardInterrupt):
        analyze_files(analyzer, find_inputs([audio]), scores, write=killed_after_four)
    # The files scored before the kill (the fifth's scores were kept, its table not written) are reused on
    # the next run, without reading them to hash them.
    _no_hashing(monkeypatch)
    statuses = [r.status for r in analyze_files(analyzer, find_inputs([audio]), scores)]
    assert statuses == [REUSED] * 5 + [ANALYSED]
    assert [r.status for r in analyze_files(analyzer, find_inputs([audio]), scores)] == [REUSED] * 6


def test_a_touched_file_is_hashed_once_and_a_changed_one_analysed(exports: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch) -> None:
    audio, scores = tmp_path / "in", tmp_path / "scores"
    touched = write_audio(audio / "a.wav", soundscape(3.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    changed = write_audio(audio / "b.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    analyzer = Analyzer(exports["tone"])
    statuses = lambda: [r.status for r in analyze_files(analyzer, find_inputs([audio]), scores)]  # noqa: E731
    assert statuses() == [ANALYSED, ANALYSED]
    os.utime(touched, ns=(1, 1))  # a checkout: new times, same content
    write_audio(changed, soundscape(3.0, 16000, [(0.5, 1.5)]), 16000, "WAV")
    hashed: list[str] = []
    real = fsutil.sha256_or
    monkeypatch.setattr(analyze_module.fsutil, "sha256_or", lambda path, *a: hashed.append(Path(path).name)
                        or real(path, *a))
    assert statuses() == [REUSED, ANALYSED] and hashed == ["a.wav", "b.wav"]
    hashed.clear()
    assert statuses() == [REUSED, REUSED] and hashed == []  # the new times were recorded


def test_score_files_are_float16_compressed_and_reuse_gives_the_same_tables(exports: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    path = write_audio(tmp_path / "in" / "long.wav", soundscape(120.0, 16000, [(30.0, 60.0)]), 16000, "WAV")
    first, second, scores = tmp_path / "first", tmp_path / "second", tmp_path / "scores"
    for out in (first, second):
        done = analyze_cli("--model", str(exports["wide"]), "--out", str(out), "--scores", str(scores),
                           "--min-score", "0.9", str(path.parent))
        assert done.returncode == 0, done.stderr
    assert pd.read_csv(second / "files.tsv", sep="\t")["status"].tolist() == ["reused"]
    for name in ("detections.tsv", "long.jibjib.selections.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    npz, windows = scores / "long.npz", 1 + (VGGISH.n_frames(120 * 16000) - 96) // 48
    with np.load(npz) as z:
        assert z["scores"].dtype == np.float16 and z["scores"].shape == (windows, CLASSES)
    # Uncompressed float32 scores alone would be windows x 250 x 4 bytes; these are at most half of that.
    assert npz.stat().st_size < windows * CLASSES * 4 / 2
    assert load_scores(npz).scores.dtype == np.float32


def test_links_and_odd_names(exports: dict[str, Path], tmp_path: Path) -> None:
    """A folder of links, some pointing outside it and one at nothing, and names with spaces and symbols."""
    elsewhere = tmp_path / "archive"
    target = write_audio(elsewhere / "20260501_050000.wav", soundscape(3.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    folder = tmp_path / "site A"
    (folder / "day 1").mkdir(parents=True)
    (folder / "day 1" / "dawn #1 (é).wav").symlink_to(target)
    (folder / "-leading dash.wav").symlink_to(os.path.relpath(target, folder))
    (folder / "gone.wav").symlink_to(elsewhere / "deleted.wav")
    (folder / "linked day").symlink_to(elsewhere, target_is_directory=True)
    write_audio(folder / "plain;name.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    out = tmp_path / "out"
    done = analyze_cli("--model", str(exports["tone"]), "--out", str(out), "--scores", str(tmp_path / "scores"),
                       str(folder))
    assert done.returncode == 1, done.stderr  # one file could not be analysed; the others were
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False).set_index("file")
    assert files["status"].to_dict() == {"-leading dash.wav": "analysed", "day 1/dawn #1 (é).wav": "analysed",
                                         "gone.wav": "rejected", "linked day/20260501_050000.wav": "analysed",
                                         "plain;name.wav": "analysed"}
    assert files.loc["gone.wav", "reason"] == "unreadable"
    assert files.loc["gone.wav", "detail"] == f"broken symbolic link to {elsewhere / 'deleted.wav'}"
    assert (out / "day 1" / "dawn #1 (é).jibjib.selections.txt").is_file()
    assert (tmp_path / "scores" / "linked day" / "20260501_050000.npz").is_file()
    detections = pd.read_csv(out / "detections.tsv", sep="\t")
    assert set(detections["file"]) == {"-leading dash.wav", "day 1/dawn #1 (é).wav", "linked day/20260501_050000.wav"}


def test_tables_never_replace_a_file_jibjib_did_not_write(exports: dict[str, Path], tmp_path: Path) -> None:
    """--out pointed at an annotated folder: the human tables stay; a file in the way stops the run first."""
    folder = tmp_path / "annotated"
    write_audio(folder / "site1.wav", soundscape(6.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    write_audio(folder / "site2.wav", soundscape(6.0, 16000, [(3.0, 4.0)]), 16000, "WAV")
    human = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\tSpectrogram 1\t1\t1.0\t2.0\tTone\n"
    (folder / "site1.selections.txt").write_text(human)
    model = str(exports["tone"])
    assert analyze_cli("--model", model, "--out", str(folder), str(folder)).returncode == 0
    assert (folder / "site1.selections.txt").read_text() == human
    ours = folder / "site1.jibjib.selections.txt"
    assert ours.read_text().startswith("Selection\tView") and "Tone" in ours.read_text()

    # Rewriting our own unchanged tables is fine; an edited one, or a stranger's file, stops the run.
    assert analyze_cli("--model", model, "--out", str(folder), str(folder)).returncode == 0
    ours.write_text(ours.read_text() + "2\tSpectrogram 1\t1\t4.0\t5.0\t125.0\t7500.0\tTone\t1.0\n")
    edited = ours.read_text()
    done = analyze_cli("--model", model, "--out", str(folder), str(folder))
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "site1.jibjib.selections.txt: not a table jibjib wrote" in line, done.stderr
    assert ours.read_text() == edited
    ours.unlink()
    (folder / "site2.jibjib.selections.txt").write_text("my own notes\n")
    done = analyze_cli("--model", model, "--out", str(folder), str(folder))
    assert done.returncode == 1 and "site2.jibjib.selections.txt: not a table jibjib wrote" in done.stderr
    assert (folder / "site2.jibjib.selections.txt").read_text() == "my own notes\n"

    # A table jibjib wrote for a recording since removed goes with it, unless it was edited.
    (folder / "site2.jibjib.selections.txt").unlink()
    assert analyze_cli("--model", model, "--out", str(folder), str(folder)).returncode == 0
    (folder / "site2.wav").unlink()
    assert analyze_cli("--model", model, "--out", str(folder), str(folder)).returncode == 0
    assert not (folder / "site2.jibjib.selections.txt").exists() and (folder / "site1.selections.txt").is_file()


def test_the_command_leaves_blas_to_the_subcommand() -> None:
    """analyze (and features) run numpy's BLAS on one thread beside the model: the `jibjib` parser must not load
    numpy, or BLAS would have started one thread per core, spinning between calls (an hour of audio took 21 s
    of CPU instead of 13 with the TFLite engine on 2 cores)."""
    code = ("import sys; from jibjib.cli import build_parser; build_parser(); assert 'numpy' not in sys.modules; "
            "from jibjib.cli.common import single_threaded_blas; single_threaded_blas(); import numpy; "
            "from threadpoolctl import threadpool_info; print(max(i['num_threads'] for i in threadpool_info()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={k: v for k, v in REPO_ENV.items() if not k.endswith("_NUM_THREADS")}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
