"""A bad config or command line stops early with one line naming the problem.

Through Snakemake the checks run while the Snakefile is parsed, so nothing is
written; through the `jibjib` command, arguments are checked before any heavy
import, and expected errors print `jibjib <command>: error: ...` instead of a
traceback. Hostile files named in the config (a pickle as label map, a Keras
model or pickle as checkpoint) are refused without running anything.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PREPARATION_TARGETS as TARGETS
from conftest import REPO, WritesFile, chirp, make_tree, run_snakemake, write_wav
from jibjib import cli
from jibjib.core.errors import ConfigError
from jibjib.models.checkpoint import check_checkpoint


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    """A good two-species tree and one bad tree per data_dir problem, below tmp_path."""
    make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1})
    make_tree(tmp_path / "one", {"Alpha_one": 1})
    # Files but no species folder: a loose WAV and a hidden folder.
    write_wav(tmp_path / "flat" / "Alpha_one-1_1.wav", chirp(2.0, 22050), 22050)
    make_tree(tmp_path / "flat" / ".hidden", {"Alpha_one": 1})
    for name, files in {"empty": [], "texts": ["notes.txt", "song.mp3.txt"], "hidden": [".DS_Store", "._x.wav"]}.items():
        make_tree(tmp_path / name, {"Alpha_one": 1})
        (tmp_path / name / "Beta_two").mkdir()
        for file in files:
            (tmp_path / name / "Beta_two" / file).write_text("not audio")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "hostile.pickle").write_bytes(pickle.dumps({"Alpha_one": WritesFile(tmp_path / "pwned")}))
    (tmp_path / "weights.pickle").write_bytes(pickle.dumps({"vggish/conv1/weights": [0.0]}))
    (tmp_path / "species.txt").write_text("Alpha_one\nAlpha_uno\n")
    return tmp_path


NO_AUDIO = "has no audio files (.wav, .flac, .opus, .ogg, .oga, .mp3)"

# (config overrides, the one line expected on stderr); {tmp} is the test's tmp_path.
BAD_CONFIGS = {
    "missing data_dir": ({"data_dir": "{tmp}/nowhere"}, "config: data_dir: {tmp}/nowhere does not exist"),
    "data_dir is a file": ({"data_dir": "{tmp}/a_file"}, "config: data_dir: {tmp}/a_file is not a folder"),
    "no species folder": ({"data_dir": "{tmp}/flat"},
                          "config: data_dir: {tmp}/flat has no species folders (expected {tmp}/flat/<Genus_species>/*.wav)"),
    "one species": ({"data_dir": "{tmp}/one"},
                    "config: data_dir: {tmp}/one has only one species folder (Alpha_one); a classifier needs two or more"),
    "empty species folder": ({"data_dir": "{tmp}/empty"},
                             "config: data_dir: species folder {tmp}/empty/Beta_two " + NO_AUDIO),
    "species of text files": ({"data_dir": "{tmp}/texts"},
                              "config: data_dir: species folder {tmp}/texts/Beta_two " + NO_AUDIO),
    "species of hidden files": ({"data_dir": "{tmp}/hidden"},
                                "config: data_dir: species folder {tmp}/hidden/Beta_two " + NO_AUDIO),
    "fractions sum": ({"split": {"fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}},
                      "config: split.fractions: train + val + test must add up to 1, got 0.5 + 0.1 + 0.1 = 0.7"),
    "fraction above 1": ({"split": {"fractions": {"train": 1.5}}},
                         "config: split.fractions.train: 1.5 is greater than the maximum of 1"),
    "misspelt key": ({"split": {"fraction": 0.5}},
                     "config: split: Additional properties are not allowed ('fraction' was unexpected)"),
    "bad recording pattern": ({"split": {"recording_pattern": "(?P<recording>"}},
                              "config: split.recording_pattern: not a valid regular expression"),
    "unknown model": ({"models": ["vggish", "resnet"]},
                      "config: models.1: 'resnet' is not one of ['vggish', 'convlstm']"),
    "missing checkpoint": ({"vggish": {"checkpoint": "/nowhere/vggish_model.ckpt"}},
                           "config: vggish.checkpoint: /nowhere/vggish_model.ckpt: no such checkpoint"),
    "pickle as checkpoint": ({"vggish": {"checkpoint": "{tmp}/weights.pickle"}},
                             "config: vggish.checkpoint: {tmp}/weights.pickle: not a readable TF checkpoint "
                             "(weights.pickle is a Python pickle; only TensorFlow checkpoints are read)"),
    "missing label map": ({"label_map": "{tmp}/missing.pickle"},
                          "config: label_map: {tmp}/missing.pickle does not exist"),
    "hostile label map": ({"label_map": "{tmp}/hostile.pickle"},
                          "config: label_map: {tmp}/hostile.pickle refused: the pickle asks for "),
    "missing analysis folder": ({"analyze": {"input_dir": "{tmp}/field"}},
                                "config: analyze.input_dir: {tmp}/field does not exist"),
    "analysis folder without audio": ({"analyze": {"input_dir": "{tmp}/texts/Beta_two"}},
                                      "config: analyze.input_dir: {tmp}/texts/Beta_two " + NO_AUDIO),
    "analysis with an untrained model": ({"models": ["vggish"], "analyze": {"input_dir": "{tmp}/birds",
                                                                            "models": ["convlstm"]}},
                                         "config: analyze.models: convlstm not among the trained models (vggish)"),
    "tflite analysis without tflite export": ({"analyze": {"input_dir": "{tmp}/birds", "engine": "tflite"}},
                                              "config: analyze.engine: tflite runs the export's TFLite analysis "
                                              "file, which only export.tflite: true writes"),
    "unknown analysis engine": ({"analyze": {"engine": "onnx"}},
                                "config: analyze.engine: 'onnx' is not one of ['savedmodel', 'tflite']"),
    "species list with an unknown name": ({"analyze": {"input_dir": "{tmp}/birds", "species_lists": "{tmp}/species.txt"}},
                                          "config: analyze.species_lists: {tmp}/species.txt:2: 'Alpha_uno' is not a "
                                          "species of data_dir (did you mean 'Alpha_one'?)"),
    "site pattern without a site": ({"analyze": {"input_dir": "{tmp}/birds", "site_pattern": "plot"}},
                                    "config: analyze.site_pattern: 'plot' has no group named site"),
    "one verifications file for two models": ({"analyze": {"input_dir": "{tmp}/birds",
                                                           "verifications": "{tmp}/species.txt"}},
                                              "config: analyze.verifications: {tmp}/species.txt would serve 2 models"),
    "unknown table format": ({"analyze": {"format": ["raven", "kml"]}},
                             "config: analyze.format: ['raven', 'kml'] is not valid under any of the given schemas"),
    "missing soundscapes": ({"soundscapes": {"audio_dir": "{tmp}/scapes"}},
                            "config: soundscapes.audio_dir: {tmp}/scapes does not exist"),
    "missing unlabelled audio": ({"self_training": {"audio_dir": "{tmp}/unlabelled"}},
                                 "config: self_training.audio_dir: {tmp}/unlabelled does not exist"),
    "unlabelled audio without audio": ({"self_training": {"audio_dir": "{tmp}/texts/Beta_two"}},
                                       "config: self_training.audio_dir: {tmp}/texts/Beta_two " + NO_AUDIO),
    "self-training of an untrained model": ({"models": ["vggish"], "self_training": {"audio_dir": "{tmp}/birds"}},
                                            "config: self_training.models: convlstm not among the trained models "
                                            "(vggish)"),
    "self-training over several tasks": ({"train": {"tasks_per_node": 2}, "self_training": {"audio_dir": "{tmp}/birds"}},
                                         "config: self_training: a student trains in one process, not with "
                                         "train.nodes x train.tasks_per_node = 2 tasks; set self_training.audio_dir: "
                                         "null or one task"),
    "reversed SNR range": ({"train": {"augment": {"background_snr_db": [20, 0]}}},
                           "config: train.augment.background_snr_db: must be [low, high] with low <= high, got [20, 0]"),
    "misspelt augmentation": ({"train": {"augment": {"mix_up": 0.5}}},
                              "config: train.augment: Additional properties are not allowed ('mix_up' was unexpected)"),
    "tflite not a flag": ({"export": {"tflite": "yes"}}, "config: export.tflite: 'yes' is not of type 'boolean'"),
    "legacy serving not a flag": ({"export": {"legacy_serving": 1}},
                                  "config: export.legacy_serving: 1 is not of type 'boolean'"),
}


def _expand(value, tmp: Path):
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _expand(v, tmp) for k, v in value.items()}
    return value


def assert_stops_with_one_line(result: subprocess.CompletedProcess, expected: str, workdir: Path) -> None:
    assert result.returncode != 0
    # Snakemake's own notice about the profile may precede it; ours is the only `config:` line.
    ours = [line for line in result.stderr.splitlines() if line.startswith("config:")]
    assert len(ours) == 1 and ours[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_stops_the_run_before_any_work(trees: Path, case: str) -> None:
    overrides, expected = (_expand(part, trees) for part in BAD_CONFIGS[case])
    result = run_snakemake(trees, *TARGETS, config={"data_dir": trees / "birds", **overrides}, check=False)
    assert_stops_with_one_line(result, expected, trees)
    assert not (trees / "pwned").exists()


@pytest.mark.parametrize("case", ["missing data_dir", "one species", "fractions sum", "missing checkpoint"])
def test_dry_run_reports_the_same_line(trees: Path, case: str) -> None:
    overrides, expected = (_expand(part, trees) for part in BAD_CONFIGS[case])
    result = run_snakemake(trees, "--dry-run", config={"data_dir": trees / "birds", **overrides}, check=False)
    assert_stops_with_one_line(result, expected, trees)


def test_species_whose_wavs_are_all_unusable_is_named(tmp_path: Path) -> None:
    """Only reading the files can tell; the labels step then stops with the species and the reasons."""
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1})
    for wav in (data / "Beta_two").iterdir():
        wav.write_bytes(b"")
    (data / "Beta_two" / "notes.txt").write_text("not audio")
    result = run_snakemake(tmp_path, *TARGETS, config={"data_dir": data}, check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/labels.log").read_text()
    assert log.splitlines() == ["jibjib labels: error: no usable audio for species 'Beta_two' "
                                "(empty: 2 files, not_audio: 1 file); fix or remove that folder"]
    assert not (tmp_path / "results/labels.tsv").exists()


# --- the jibjib command -------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `jibjib argv`, run in this process."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A species manifest (QC rows) as the features step writes it."""
    path = tmp_path / "Alpha_one.tsv"
    assert cli.main(["features", "--data-dir", str(make_tree(tmp_path / "birds", {"Alpha_one": 2})),
                     "--label", "Alpha_one", "--features-dir", str(tmp_path / "features"),
                     "--manifest", str(path)]) == 0
    return path


def test_cli_usage_errors_are_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    rest = ["--labels", str(tmp_path / "labels.tsv"), "--split", str(tmp_path / "split.tsv"),
            "--features-dir", str(tmp_path), "--out-dir", str(tmp_path / "model"), "--settings", "{}"]
    status, err = run_cli(capsys, "train", "--model", "nope", *rest)
    assert status == 2
    assert err == ["jibjib train: error: argument --model: invalid choice: 'nope' "
                   "(choose from 'vggish', 'convlstm') (see jibjib train --help)"]
    status, err = run_cli(capsys, "train", "--model", "convlstm", *rest)
    assert status == 2
    assert err == [f"jibjib train: error: argument --labels: {tmp_path}/labels.tsv does not exist "
                   "(see jibjib train --help)"]
    status, err = run_cli(capsys, "features", "--data-dir", str(tmp_path / "nowhere"), "--label", "Alpha_one",
                          "--features-dir", str(tmp_path / "features"), "--manifest", str(tmp_path / "m.tsv"))
    assert status == 2
    assert err == [f"jibjib features: error: argument --data-dir: {tmp_path}/nowhere does not exist "
                   "(see jibjib features --help)"]
    status, err = run_cli(capsys, "qc", "--data-dir", str(tmp_path), "--manifests", str(tmp_path),
                          "--out", str(tmp_path / "q.tsv"))
    assert status == 2
    assert err == [f"jibjib qc: error: argument --manifests: {tmp_path} is a folder, not a file "
                   "(see jibjib qc --help)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_missing_species_folder_is_not_an_empty_species(tmp_path: Path, capsys) -> None:
    (tmp_path / "birds").mkdir()
    status, err = run_cli(capsys, "features", "--data-dir", str(tmp_path / "birds"), "--label", "Alpha_one",
                          "--features-dir", str(tmp_path / "features"), "--manifest", str(tmp_path / "m.tsv"))
    assert status == 1
    assert err == [f"jibjib features: error: {tmp_path}/birds/Alpha_one: no such species folder"]
    assert not (tmp_path / "m.tsv").exists()


@pytest.mark.parametrize(("fractions", "message"), [
    (("0.5", "0.1", "0.1"), "train + val + test must add up to 1, got 0.5 + 0.1 + 0.1 = 0.7"),
    (("1.2", "-0.2", "0"), "fractions must not be negative, got val -0.2"),
])
def test_cli_split_fractions_must_add_up(manifest: Path, capsys, fractions: tuple[str, ...], message: str) -> None:
    out = manifest.parent / "split.tsv"
    status, err = run_cli(capsys, "split", "--manifests", str(manifest), "--out", str(out),
                          "--train", fractions[0], "--val", fractions[1], "--test", fractions[2])
    assert (status, err) == (1, [f"jibjib split: error: {message}"])
    assert not out.exists()


def test_cli_refuses_a_hostile_label_map_without_running_it(manifest: Path, capsys) -> None:
    root = manifest.parent
    hostile = root / "bird_id_map.pickle"
    hostile.write_bytes(pickle.dumps({"Alpha_one": WritesFile(root / "pwned")}))
    status, err = run_cli(capsys, "labels", "--qc", str(manifest), "--out", str(root / "labels.tsv"),
                          "--label-map", str(hostile))
    assert status == 1
    assert err == [f"jibjib labels: error: {hostile} refused: the pickle asks for io.open, only plain data is accepted"]
    assert not (root / "pwned").exists() and not (root / "labels.tsv").exists()


def test_cli_unexpected_errors_keep_their_traceback(monkeypatch, manifest: Path) -> None:
    def broken(args) -> None:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli.labels, "cmd_split", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["split", "--manifests", str(manifest), "--out", str(manifest.parent / "s.tsv")])

    def missing_without_a_path(args) -> None:
        raise FileNotFoundError("no file name to report")

    monkeypatch.setattr(cli.labels, "cmd_split", missing_without_a_path)
    with pytest.raises(FileNotFoundError):
        cli.main(["split", "--manifests", str(manifest), "--out", str(manifest.parent / "s.tsv")])


def test_python_m_jibjib_prints_one_line_and_fails(manifest: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jibjib", "split", "--manifests", str(manifest), "--out", str(manifest.parent / "s.tsv"),
         "--train", "0.5"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["jibjib split: error: train + val + test must add up to 1, "
                                          "got 0.5 + 0.15 + 0.15 = 0.8"]


def test_cli_split_defaults_are_those_of_config_yaml() -> None:
    import yaml

    fractions = yaml.safe_load((REPO / "config.yaml").read_text())["split"]["fractions"]
    args = cli.build_parser().parse_args(["split", "--manifests", str(REPO / "config.yaml"), "--out", "s.tsv"])
    assert {"train": args.train, "val": args.val, "test": args.test} == fractions


@pytest.mark.parametrize("label", ["..", "a/b"])
def test_cli_features_label_that_is_not_a_folder_name_is_one_line(tmp_path: Path, capsys, label: str) -> None:
    make_tree(tmp_path / "birds", {"Alpha_one": 1})
    status, err = run_cli(capsys, "features", "--data-dir", str(tmp_path / "birds"), f"--label={label}",
                          "--features-dir", str(tmp_path / "features"), "--manifest", str(tmp_path / "m.tsv"))
    assert (status, err) == (1, [f"jibjib features: error: species label {label!r} is not a plain folder name"])
    assert not (tmp_path / "m.tsv").exists() and not (tmp_path / "features").exists()


def test_cli_train_bad_settings_json_is_one_line(manifest: Path, capsys) -> None:
    root = manifest.parent
    for name in ("labels.tsv", "split.tsv"):
        (root / name).write_text("")
    status, err = run_cli(capsys, "train", "--model", "convlstm", "--labels", str(root / "labels.tsv"),
                          "--split", str(root / "split.tsv"), "--features-dir", str(root),
                          "--out-dir", str(root / "model"), "--settings", "{epochs: 3}")
    assert status == 1 and len(err) == 1
    assert err[0].startswith("jibjib train: error: --settings: not valid JSON (Expecting property name")
    assert not (root / "model").exists()


# --- hostile files given as the VGGish checkpoint -------------------------------------------------


def test_config_check_refuses_what_is_not_a_tf_checkpoint(tmp_path: Path) -> None:
    payloads = {
        "model.keras": b"PK\x03\x04" + bytes(60),
        "model.h5": b"\x89HDF\r\n\x1a\n" + bytes(60),
        "weights.pickle": pickle.dumps({"vggish/conv1/weights": [0.0]}),
        "vggish_model.ckpt": b"half a checkpoint",
    }
    kinds = {"model.keras": "a zip archive", "model.h5": "an HDF5 file", "weights.pickle": "a Python pickle",
             "vggish_model.ckpt": "lacks the TensorFlow checkpoint footer"}
    for name, payload in payloads.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ConfigError, match=rf"^vggish\.checkpoint: .*{name}: not a readable TF checkpoint "
                                              rf"\({name} .*{kinds[name]}"):
            check_checkpoint(str(tmp_path / name))
    with pytest.raises(ConfigError, match="a folder"):
        check_checkpoint(str(tmp_path))


def test_loader_refuses_a_keras_model_that_would_run_code(tmp_path: Path) -> None:
    """A Keras model with a Lambda layer runs the layer's code when loaded unsafely; the
    checkpoint loader must refuse it by format and never get that far."""
    keras = pytest.importorskip("keras")
    from jibjib.models.vggish import CheckpointError, load_vggish_checkpoint

    target = tmp_path / "pwned"
    inputs = keras.Input((2,))
    touch = eval(f"lambda x: (open({str(target)!r}, 'w').close(), x)[1]")  # saved as bytecode with the model
    model = keras.Model(inputs, keras.layers.Lambda(touch)(inputs))
    paths = [tmp_path / "vggish.keras", tmp_path / "vggish.h5"]
    for path in paths:
        model.save(path)
    # The payload is real: loading one model unsafely runs it.
    target.unlink()
    keras.models.load_model(paths[0], safe_mode=False)
    assert target.exists()
    target.unlink()

    stand_in = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    before = [w.numpy().copy() for w in stand_in.weights]
    for path, kind in zip(paths, ["a zip archive", "an HDF5 file"]):
        with pytest.raises(CheckpointError, match=rf"{path.name}: not a readable TF checkpoint \({path.name} is {kind}"):
            load_vggish_checkpoint(stand_in, path)
        assert not target.exists()
    for old, new in zip(before, stand_in.weights):
        assert (old == new.numpy()).all()
