"""The workflow on a real SLURM cluster through profiles/slurm.

Runs only against the single-node cluster that tests/slurm/start.sh starts
(ClusterName jibjib-ci), never against a cluster it happens to find: it
submits jobs. .ci/run starts that cluster and sets JIBJIB_REQUIRE_SLURM=1, so
in CI a missing cluster fails this test instead of skipping it.

One small demo set goes through the workflow twice, on the local executor and
with `--workflow-profile profiles/slurm`; the test checks that every job except
the local `all` went through sbatch (Snakemake's log against SLURM's own job
records), that GPU jobs ran on the GPU partition with a GPU, and that the two
runs produced the same files.

A dry run through the profile needs no cluster: it checks the routing of
every rule the analysis adds (analyze.input_dir, soundscapes.audio_dir) with
each analysis engine.
"""

from __future__ import annotations

import filecmp
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from conftest import REPO, REPO_ENV, run_snakemake
from jibjib.features.inventory import shard_species

CLUSTER = "jibjib-ci"  # ClusterName in tests/slurm/slurm.conf
REQUIRED = os.environ.get("JIBJIB_REQUIRE_SLURM") == "1"
SLURM_RUN_SECONDS = 600

# Tiny settings: the point is the scheduling, not the model. One model keeps
# the GPU wave to one job (both training rules share one definition).
TINY = {
    "models": ["convlstm"],
    "convlstm": {"epochs": 1, "batch_size": 4, "seq_len": 2, "conv_filters": [4],
                 "lstm_units": 8, "dense_units": 8},
}


def _cluster_problem() -> str | None:
    """Why the CI cluster cannot be used, or None when it is up."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (start a cluster with tests/slurm/start.sh)"
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "SLURM does not answer (scontrol/sinfo timed out)"
    if config.returncode != 0 or nodes.returncode != 0:
        return f"SLURM is not running: {(config.stderr or nodes.stderr).strip()[:200]}"
    name = re.search(r"^ClusterName\s*=\s*(\S+)", config.stdout, re.M)
    if not name or name.group(1) != CLUSTER:
        return (f"the cluster here is {name.group(1) if name else 'unnamed'!r}, not the test cluster "
                f"{CLUSTER!r} of tests/slurm/start.sh; not submitting test jobs to it")
    states = set(nodes.stdout.split())
    if not states & {"idle", "mixed", "allocated"}:
        return f"no usable node (states: {sorted(states)})"
    return None


def _require_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if REQUIRED:
        pytest.fail(f"JIBJIB_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(problem)


def _jobs_in_log(log: str) -> dict[int, tuple[str, str, bool]]:
    """Snakemake jobid -> (rule, wildcards, asks for a GPU) for every non-local job the run scheduled."""
    jobs: dict[int, tuple[str, str, bool]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", log):
        head = re.match(r"(local)?rule (\w+):\n", block)
        if not head or head.group(1):
            continue
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        gpu = bool(resources and re.search(r"(^|, )gpu=[1-9]", resources.group(1)))
        jobs[int(jobid.group(1))] = (head.group(2), wildcards.group(1) if wildcards else "", gpu)
    return jobs


def _submissions_in_log(log: str) -> dict[int, list[str]]:
    """Snakemake jobid -> SLURM job ids it was submitted as (array tasks as <job>_<task>)."""
    submitted: dict[int, list[str]] = {}
    for jobid, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) ", log):
        submitted.setdefault(int(jobid), []).append(slurm_id)
    array = r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. The individual task IDs are (\d+)-(\d+)\."
    for ids, slurm_id, first, last in re.findall(array, log):
        jobids = [int(i) for i in ids.split(",")]
        assert len(jobids) == int(last) - int(first) + 1
        for task, jobid in enumerate(jobids, start=int(first)):
            submitted.setdefault(jobid, []).append(f"{slurm_id}_{task}")
    return submitted


def _slurm_records(job_name: str) -> dict[str, dict[str, str]]:
    """SLURM's own record of every job named `job_name` (finished ones stay for MinJobAge)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    records = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobName") != job_name:
            continue
        if fields.get("ArrayTaskId"):
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        else:
            key = fields["JobId"]
        records[key] = fields
    return records


def _run_on_slurm(workdir: Path, overrides: Path) -> str:
    """The workflow through profiles/slurm; returns Snakemake's log (stderr)."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(REPO / "config.yaml"), str(overrides),
        "--workflow-profile", str(REPO / "profiles/slurm"),
        "--profile", str(REPO / "tests/slurm/profile"),
    ]
    # The test cluster's partitions, named as a user would name theirs.
    env = {**REPO_ENV,
           "JIBJIB_SLURM_CPU_PARTITION": "cpu", "JIBJIB_SLURM_GPU_PARTITION": "gpu"}
    env.pop("JIBJIB_SLURM_ACCOUNT", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=SLURM_RUN_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGINT lets Snakemake scancel its jobs before it exits.
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"the SLURM run took over {SLURM_RUN_SECONDS} s:\n{err[-4000:]}")
    (workdir / "snakemake-slurm.log").write_text(err)
    assert process.returncode == 0, f"snakemake on SLURM failed ({process.returncode}):\n{err[-6000:]}"
    return err


def _relative_files(root: Path) -> set[str]:
    # TensorBoard names its event files after time, host and PID.
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


def _without_object_ids(value):
    # Keras records Python id()s of shared objects: they differ per process.
    if isinstance(value, dict):
        return {k: _without_object_ids(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [_without_object_ids(v) for v in value]
    return value


def _weight_shapes(model_keras: Path) -> tuple[dict, dict[str, tuple]]:
    """(architecture, weight name -> shape) of a saved .keras model, without TensorFlow."""
    with zipfile.ZipFile(model_keras) as archive:
        config = _without_object_ids(json.loads(archive.read("config.json")))
        weights = archive.read("model.weights.h5")
    shapes: dict[str, tuple] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        h5.visititems(lambda name, item: shapes.__setitem__(name, item.shape)
                      if isinstance(item, h5py.Dataset) else None)
    return config, shapes


def _planned_jobs(log: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run printed."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", log):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head and resources:
            jobs.append((head.group(1), dict(re.findall(r"(\w+)=([^,]*)", resources.group(1)))))
    return jobs


GPU_RULES = {"train_vggish", "train_convlstm", "evaluate_vggish", "evaluate_convlstm", "embed", "analyze_shard",
             "soundscape_scores_vggish", "soundscape_scores_convlstm",
             "window_scores", "train_student", "evaluate_student", "soundscape_scores_student"}


@pytest.mark.parametrize("engine", ["savedmodel", "tflite"])
def test_dry_run_routes_analysis_by_its_engine(tmp_path: Path, engine: str) -> None:
    """With analyze.input_dir and soundscapes (no cluster needed): every job that asks for a GPU goes to the
    GPU partition, every other one to the CPU partition; the analysis jobs ask for a GPU with the savedmodel
    engine and for none with tflite, on SLURM and on a workstation alike."""
    from conftest import make_tree, chirp, write_wav

    make_tree(tmp_path / "birds", {"Alpha_one": 2, "Beta_two": 2})
    write_wav(tmp_path / "field" / "a.wav", chirp(3.0, 16000), 16000)
    config = {"data_dir": str(tmp_path / "birds"), "analyze": {"input_dir": str(tmp_path / "field"), "engine": engine},
              "soundscapes": {"audio_dir": str(tmp_path / "field")}, "export": {"tflite": engine == "tflite"},
              "self_training": {"audio_dir": str(tmp_path / "field")}}
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(REPO / "config.yaml"), str(overrides), "--dry-run"]
    env = {**REPO_ENV, "JIBJIB_SLURM_CPU_PARTITION": "cpu", "JIBJIB_SLURM_GPU_PARTITION": "gpu"}
    plans = {}
    for profile in ("slurm", "default"):
        done = subprocess.run([*command, "--workflow-profile", str(REPO / "profiles" / profile)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        plans[profile] = _planned_jobs(done.stdout + done.stderr)
    suffix = "" if engine == "savedmodel" else "_cpu"
    for profile, jobs in plans.items():
        analysis = [(rule, r) for rule, r in jobs if rule.startswith(("analyze_shard", "soundscape_scores"))]
        assert {rule for rule, _ in analysis} == {f"analyze_shard{suffix}", f"soundscape_scores_vggish{suffix}",
                                                  f"soundscape_scores_convlstm{suffix}",
                                                  f"soundscape_scores_student{suffix}"}, profile
        assert all((r.get("gpu") == "1") == (engine == "savedmodel") for _, r in analysis), (profile, analysis)
    slurm = plans["slurm"]
    assert {rule for rule, _ in slurm} >= {"train_vggish", "evaluate_convlstm", "features", "analysis_tables", "review",
                                           "train_student", "pseudo_labels"}
    for rule, resources in slurm:
        gpu = resources.get("gpu") == "1"
        assert gpu == (rule in GPU_RULES), (rule, resources)
        # A GPU rule missing from profiles/slurm's set-resources would ask for a GPU on the CPU partition.
        assert resources.get("slurm_partition") == ("gpu" if gpu else "cpu"), (rule, resources)


def test_workflow_on_slurm_matches_a_local_run(tmp_path: Path) -> None:
    _require_cluster()
    data = tmp_path / "birds"
    subprocess.run([sys.executable, "-m", "jibjib", "make-demo", str(data), "--species", "3", "--recordings", "4"],
                   check=True, capture_output=True, env=REPO_ENV, timeout=120)
    config = {**TINY, "data_dir": str(data)}

    local = tmp_path / "local"
    local.mkdir()
    run_snakemake(local, config=config)

    cluster = tmp_path / "slurm"
    cluster.mkdir()
    overrides = cluster / ".test-config.yaml"
    overrides.write_text(yaml.safe_dump(config))
    log = _run_on_slurm(cluster, overrides)

    # Every non-local job went through sbatch exactly once (no retries needed),
    # and SLURM itself recorded each of them as completed.
    jobs = _jobs_in_log(log)
    rules = sorted(rule for rule, _, _ in jobs.values())
    shards = shard_species([p.name for p in data.iterdir() if p.is_dir()], 16)
    assert len(shards) > 1 and rules.count("features") == len(shards), (shards, rules)
    assert {"labels", "split", "train_convlstm"} <= set(rules), rules
    assert all(gpu for rule, _, gpu in jobs.values() if rule.startswith("train_"))
    submitted = _submissions_in_log(log)
    assert set(submitted) == set(jobs), f"jobs {sorted(jobs)} vs submitted {sorted(submitted)}"
    assert all(len(ids) == 1 for ids in submitted.values()), submitted
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    records = _slurm_records(run_id)
    slurm_ids = {ids[0] for ids in submitted.values()}
    assert set(records) == slurm_ids, f"SLURM knows {sorted(records)}, Snakemake submitted {sorted(slurm_ids)}"

    logdir = cluster / "logs/slurm"
    for jobid, (rule, wildcards, gpu) in jobs.items():
        slurm_id = submitted[jobid][0]
        record = records[slurm_id]
        assert record["JobState"] == "COMPLETED", (rule, record)
        got_gpu = "gpu" in record.get("TresPerJob", "")
        if gpu:
            # The profile's GPU routing: the GPU from the rule's gpu=1, the
            # partition from JIBJIB_SLURM_GPU_PARTITION, CPUs per GPU from the
            # threads (2 in tests/slurm/profile).
            assert got_gpu and record["Partition"] == "gpu", \
                f"{rule} asks for a GPU but ran as {record}: is it in profiles/slurm's set-resources?"
            assert record.get("CpusPerTres") == "gres:gpu:2", record
        else:
            assert not got_gpu and record["Partition"] == "cpu", (rule, record)
        # The job's sbatch output shows which job it ran: array tasks share one
        # submission, so this proves each task ran its own shard.
        job_log = next(logdir.glob(f"rule_{rule}/**/{slurm_id}.log"))
        if wildcards:
            assert f"wildcards: {wildcards}" in job_log.read_text(), (slurm_id, wildcards)
    # The feature jobs were one array (the profile's slurm-array-jobs).
    assert len({submitted[j][0].split("_")[0] for j, (rule, _, _) in jobs.items() if rule == "features"}) == 1

    # Same outputs as the local run: data products byte for byte; the model,
    # whose training is not bit-reproducible across runs, by architecture,
    # weight shapes and bookkeeping.
    assert _relative_files(cluster / "results") == _relative_files(local / "results")
    for path in sorted(_relative_files(local / "results")):
        if path.startswith(("features/", "manifests/", "sources/", "labels.tsv", "split.tsv", "qc/")):
            assert filecmp.cmp(local / "results" / path, cluster / "results" / path, shallow=False), path
    model = "results/models/convlstm"
    assert _weight_shapes(local / model / "model.keras") == _weight_shapes(cluster / model / "model.keras")
    local_report = json.loads((local / model / "train.json").read_text())
    cluster_report = json.loads((cluster / model / "train.json").read_text())
    for key in ("classes", "settings", "n_train_files", "n_val_files", "epochs_completed", "devices", "inputs"):
        assert cluster_report[key] == local_report[key], key
    local_history = pd.read_csv(local / model / "history.tsv", sep="\t")
    cluster_history = pd.read_csv(cluster / model / "history.tsv", sep="\t")
    assert list(cluster_history.columns) == list(local_history.columns)
    assert list(cluster_history["epoch"]) == list(local_history["epoch"]) == [1]
