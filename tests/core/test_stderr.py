"""jibjib's stderr carries its own messages; what native code writes to fd 2 is kept out of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO_ENV
from jibjib import cli
from jibjib.core.errors import InputError

# A command stubbed in a child process: native code writes to fd 2 as TensorFlow's C++ logging does,
# jibjib prints a message, a child process given our stderr prints one, then `ending` happens.
STUB = """
    import os, subprocess, sys
    from jibjib import cli
    from jibjib.core.errors import InputError

    def command(args):
        os.write(2, b"I tensorflow/fake chatter\\n")
        print("split: our message", file=sys.stderr)
        subprocess.run([sys.executable, "-c", "import sys; print('child', file=sys.stderr)"], stderr=sys.stderr)
        {ending}

    cli.labels.cmd_split = command
    sys.exit(cli.main(["split", "--manifests", {manifest!r}, "--out", "split.tsv"]))
"""


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in REPO_ENV.items() if k != "JIBJIB_TF_LOG"}
    return {**base, "TF_CPP_MIN_LOG_LEVEL": "0", **extra}


def run_stub(tmp_path: Path, ending: str, **extra: str) -> tuple[int, str]:
    """Exit status and stderr of the stubbed command, its stderr a file as under Snakemake's `2> {log}`."""
    manifest = tmp_path / "m.tsv"
    manifest.write_text("")
    code = textwrap.dedent(STUB).format(ending=ending, manifest=str(manifest))
    with open(tmp_path / "stderr.log", "w") as log:
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, stderr=log, env=env(**extra), timeout=120)
    return result.returncode, (tmp_path / "stderr.log").read_text()


def test_a_user_error_is_our_lines_only(tmp_path: Path) -> None:
    status, stderr = run_stub(tmp_path, "raise InputError('bad value')")
    assert status == 1
    assert stderr == "split: our message\nchild\njibjib split: error: bad value\n"


def test_jibjib_tf_log_receives_the_native_output(tmp_path: Path) -> None:
    log = tmp_path / "tf.log"
    log.write_text("earlier run\n")
    status, stderr = run_stub(tmp_path, "return 0", JIBJIB_TF_LOG=str(log))
    assert status == 0 and stderr == "split: our message\nchild\n"
    earlier, header, chatter = log.read_text().splitlines()
    assert earlier == "earlier run" and header.startswith("==> jibjib split (pid ")
    assert chatter == "I tensorflow/fake chatter"


def test_an_unwritable_jibjib_tf_log_is_one_warning(tmp_path: Path) -> None:
    status, stderr = run_stub(tmp_path, "return 0", JIBJIB_TF_LOG=str(tmp_path / "no" / "tf.log"))
    assert status == 0
    assert stderr.splitlines() == [f"jibjib split: warning: JIBJIB_TF_LOG={tmp_path / 'no' / 'tf.log'}: "
                                   "No such file or directory; TensorFlow's own output is dropped",
                                   "split: our message", "child"]


def test_a_bug_shows_the_native_output_after_its_traceback(tmp_path: Path) -> None:
    status, stderr = run_stub(tmp_path, "raise KeyError('a bug')")
    assert status == 1
    lines = stderr.splitlines()
    assert lines[:2] == ["split: our message", "child"] and lines[2] == "Traceback (most recent call last):"
    assert lines[-3:] == ["KeyError: 'a bug'", "Native output of jibjib split (TensorFlow's log):",
                          "I tensorflow/fake chatter"]


def test_in_process_fd_2_is_restored(tmp_path: Path, capfd, monkeypatch) -> None:
    def command(args) -> None:
        os.write(2, b"I tensorflow/fake chatter\n")
        print("split: our message", file=sys.stderr)
        raise InputError("bad value")

    monkeypatch.setattr(cli.labels, "cmd_split", command)
    (tmp_path / "m.tsv").write_text("")
    assert cli.main(["split", "--manifests", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "s.tsv")]) == 1
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "split: our message\njibjib split: error: bad value\nafter\n"


def test_tensorflow_logging_forced_on_stays_off_stderr(tmp_path: Path) -> None:
    """The real TensorFlow, TF_CPP_MIN_LOG_LEVEL=0: `jibjib export` loads it, then finds no model."""
    (tmp_path / "labels.tsv").write_text("class_id\tlabel\n0\tA\n")
    (tmp_path / "split.tsv").write_text("path\tsplit\n")
    log = tmp_path / "tf.log"
    command = [sys.executable, "-m", "jibjib", "export", "--model-dir", str(tmp_path), "--eval-dir", str(tmp_path),
               "--labels", str(tmp_path / "labels.tsv"), "--split", str(tmp_path / "split.tsv"),
               "--out", str(tmp_path / "export" / "1")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=env(JIBJIB_TF_LOG=str(log)))
    assert result.returncode == 1
    assert result.stderr == f"jibjib export: error: {tmp_path / 'train.json'}: No such file or directory\n"
    header, *native = log.read_text().splitlines()
    assert header.startswith("==> jibjib export (pid ")
    # Whatever TensorFlow logs on this host when it loads went to the log, not to stderr.
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          timeout=300, env=env())
    assert len(native) >= len(bare.stderr.splitlines())
