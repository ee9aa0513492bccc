"""One model trained by two SLURM tasks together (MultiWorkerMirroredStrategy), killed and resumed.

Needs the single-node test cluster of tests/slurm/start.sh, like
test_slurm.py (skipped without it, failed under JIBJIB_REQUIRE_SLURM=1).
The two tasks are CPU workers on the one node, on localhost ports. The job
is submitted with sbatch and starts the tasks with srun, as the training
rules do with train.tasks_per_node > 1 (whose resources and shell the last
test checks in a dry run).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import REPO, REPO_ENV, run_snakemake
from test_slurm import _require_cluster
from test_train import TINY_CONVLSTM, run_settings, tiny  # noqa: F401 - the fixture

# Few epochs (about a second each): two CPU workers on a shared 2-core machine; enough that a scancel after
# the second lands mid-run.
SETTINGS = {**TINY_CONVLSTM, "epochs": 8, "gpus_per_task": 0}
JOB_SECONDS = 240


def _submit(root: Path, log: Path) -> str:
    """sbatch a two-task job whose srun starts one training process per task; the job id."""
    train = [sys.executable, "-m", "jibjib", "train", "--model", "convlstm", "--labels", str(root / "labels.tsv"),
             "--split", str(root / "split.tsv"), "--features-dir", str(root / "features"),
             "--out-dir", str(root / "model"), "--settings", json.dumps(run_settings(SETTINGS)), "--threads", "1"]
    step = "srun --ntasks=2 --ntasks-per-node=2 --kill-on-bad-exit=1 " + shlex.join(train)
    result = subprocess.run(
        ["sbatch", "--parsable", "--job-name=jibjib-multiworker", "--partition=cpu", "--nodes=1", "--ntasks=2",
         "--cpus-per-task=1", "--mem=4000", f"--output={log}", f"--chdir={REPO}", "--wrap", step],
        capture_output=True, text=True, env=REPO_ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _job_state(job: str) -> str:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    for field in shown.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def _wait(job: str, until: "callable[[], bool] | None" = None) -> str:
    """Wait until the job has ended (its final state) or `until()` holds (then "WAITED")."""
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        state = _job_state(job)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        if until is not None and until():
            return "WAITED"
        time.sleep(0.5)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"SLURM job {job} took over {JOB_SECONDS} s")


def _saved_epoch(root: Path) -> int:
    state = root / "model" / "checkpoints" / "state.json"
    try:
        return int(json.loads(state.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_two_tasks_train_one_model_and_resume_after_scancel(tiny: Path) -> None:  # noqa: F811 - the fixture
    _require_cluster()
    first_log, second_log = tiny / "first.log", tiny / "second.log"
    job = _submit(tiny, first_log)
    assert _wait(job, until=lambda: _saved_epoch(tiny) >= 2) == "WAITED", first_log.read_text()[-3000:]
    cancelled_at = _saved_epoch(tiny)
    subprocess.run(["scancel", job], check=True, timeout=30)
    _wait(job)
    killed_at = _saved_epoch(tiny)
    assert 2 <= killed_at < SETTINGS["epochs"], "the job was not cancelled mid-training"
    # SIGTERM ends the workers (MultiWorkerMirroredStrategy's coordination service would swallow it): at most
    # the epoch in flight at the scancel was saved, not the rest of the run until SLURM's SIGKILL.
    assert killed_at <= cancelled_at + 1, f"saved epoch {cancelled_at} at the scancel, {killed_at} after it"
    assert not (tiny / "model" / "model.keras").exists()
    first = first_log.read_text()
    # Both tasks were workers of one cluster (each names itself), and only the chief reported epochs.
    assert "worker 0 of 2" in first and "worker 1 of 2" in first, first[-3000:]
    # batch_size is the global batch: 4, two examples on each worker's replica.
    assert "on 2 replica(s) of 2 workers" in first and "batch 4" in first, first[-3000:]

    job = _submit(tiny, second_log)
    state = _wait(job)
    second = second_log.read_text()
    assert state == "COMPLETED", second[-4000:]
    assert f"resuming from the last saved epoch ({killed_at}" in second, second[-3000:]
    assert "worker 1 of 2" in second and "worker 1 done" in second
    resumed_epochs = [int(line.split()[1].split("/")[0]) for line in second.splitlines() if line.startswith("epoch ")]
    assert resumed_epochs and min(resumed_epochs) == killed_at + 1 and max(resumed_epochs) == SETTINGS["epochs"]

    out = tiny / "model"
    report = json.loads((out / "train.json").read_text())
    assert report["resumed"] and report["devices"]["workers"] == 2 and report["devices"]["replicas"] == 2
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, SETTINGS["epochs"] + 1))
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0], history
    # The chief's files, once: no model, state or temporary file of the other worker.
    assert sorted(p.relative_to(tiny) for p in tiny.rglob("model.keras")) == \
        [Path("model/checkpoints/model.keras"), Path("model/model.keras")]  # the second kept for a rerun
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "history.tsv", "model.keras", "tensorboard",
                                                     "train.json"]
    assert not [p for p in tiny.rglob("*") if ".tmp-" in p.name]
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["history.tsv", "model.keras", "state.json", "train.json"], checkpoints


def test_training_rule_starts_one_process_per_task_only_inside_slurm(tree: Path, tmp_path: Path) -> None:
    """The rule's resources and shell for 2 nodes x 2 tasks (a dry run: no cluster needed)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {"data_dir": str(tree), "models": ["convlstm"],
              "train": {"nodes": 2, "tasks_per_node": 2, "gpus_per_task": 1}}
    result = run_snakemake(workdir, "--dry-run", "--printshellcmds", "results/models/convlstm/model.keras",
                           config=config)
    log = result.stdout + result.stderr
    block = log[log.index("rule train_convlstm:"):]
    resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
    for resource in ("nodes=2", "mpi=srun", "tasks_per_node=2", "gres=gpu:2"):
        assert resource in resources, resources
    assert "gpu=" not in resources.replace("gres=gpu", "")  # no --gpus beside the per-node --gres
    assert ("${SLURM_JOB_ID:+srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=2 "
            "--distribution=block --kill-on-bad-exit=1} python -m jibjib train") in block
