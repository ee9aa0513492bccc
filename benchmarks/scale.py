"""Scale benchmark: the workflow on a corpus of many short WAV files.

    python benchmarks/scale.py                  # 20,000 files, ~49 species
    python benchmarks/scale.py --files 80000    # the size of the original corpus

Writes a tree of N ten-second (the original corpus's slices; --seconds) 16 kHz 16-bit WAVs in S species folders
(default: the original corpus's density, about 412 files per species) and
measures, on the same files:

  direct     jibjib.features.update_species per species plus its manifest
             (what `jibjib features` does, minus process start-up), 2 worker processes
  (b)        the feature stage through the workflow (every shard manifest),
             --cores 2, from scratch: includes Snakemake's start-up and the
             listing of every file into the content signatures
  (a)        `snakemake -n` for the default target once the features exist
             (the planning cost paid by every later invocation)
  labels     the labels and split jobs on all N rows
  (c)        a rerun with nothing changed
  checkout   a rerun after touching every WAV: one hashing pass, no jobs
  (d)        the rerun after adding one species of 100 files, counting the
             npz files written

Targets at N = 20,000 on 2 cores: (b) <= 1.3 x direct, (a) <= 15 s,
(c) <= 10 s, (d) exactly 100 npz written.  Throughput on shared VMs drifts
with the host's load; the ratio, measured in the same run, is the steadier figure.
"""

from __future__ import annotations

import os

# One BLAS thread per worker, as `jibjib features` sets for itself; set before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jibjib.features.extract import update_species  # noqa: E402
from jibjib.features.inventory import shard_species  # noqa: E402
from jibjib.features.qc import write_manifest  # noqa: E402

RATE = 16000
FILES_PER_SPECIES = 412  # 80,000 files in 194 species
WORKERS = 2
SHARDS = 16  # features.shards in config.yaml
DATA_TARGETS = ["results/labels.tsv", "results/split.tsv"]


def write_tree(root: Path, n_files: int, n_species: int, seconds: float, first_species: int = 0) -> list[str]:
    """`root/Species_NNN/Species_NNN-<rec>_<k>.wav`, files spread evenly; returns the labels."""
    rng = np.random.default_rng(first_species)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    labels = [f"Species_{first_species + i:03d}" for i in range(n_species)]
    for index in range(n_files):
        label = labels[index % n_species]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        # A tone whose pitch depends on the species plus noise: never silent, every file distinct.
        tone = 0.3 * np.sin(2 * np.pi * (500 + 40 * (index % n_species)) * t)
        samples = (tone + 0.05 * rng.standard_normal(n)) * 32767
        with wave.open(str(folder / f"{label}-{index // 2:06d}_{index % 2 + 1}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(samples.astype("<i2").tobytes())
    return labels


def _extract_one(job: tuple[Path, str, Path]) -> int:
    data_dir, label, features_dir = job
    rows, stats = update_species(data_dir, label, features_dir)
    write_manifest(features_dir / f"{label}.tsv", rows)
    return stats.computed


def direct(data_dir: Path, labels: list[str], features_dir: Path) -> int:
    """The package's batch function, the same work the feature jobs do, on 2 processes."""
    with Pool(WORKERS) as pool:
        return sum(pool.map(_extract_one, [(data_dir, label, features_dir) for label in labels], chunksize=1))


def snakemake(work: Path, data_dir: Path, *args: str) -> tuple[float, str]:
    """Run the workflow in `work`; returns (seconds, stdout + stderr)."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
        "--configfile", str(REPO / "config.yaml"), "--cores", str(WORKERS), *args,
        "--config", f"data_dir={data_dir}",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    with open(work / "benchmark.log", "a") as log:
        log.write(f"$ {' '.join(command)}\n{output}\n")
    if result.returncode != 0:
        sys.exit(f"snakemake failed ({result.returncode}):\n{output[-3000:]}")
    return seconds, output


def npz_state(features_dir: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in features_dir.rglob("*.npz")}


def job_counts(output: str) -> str:
    if "Nothing to be done" in output:
        return "no jobs"
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return ", ".join(f"{rule} {count}" for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))


def sources_note(output: str) -> str:
    """What the parse-time refresh of the content signatures reported."""
    match = re.search(r"^sources: (.*)$", output, re.MULTILINE)
    return match[1] if match else "signatures unchanged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--species", type=int, help=f"default: files / {FILES_PER_SPECIES}")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each WAV: 10 s like the original slices; 1 s stresses per-job start-up")
    parser.add_argument("--root", type=Path, help="where to build the tree (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the tree and results afterwards")
    args = parser.parse_args()
    n_species = args.species or max(2, round(args.files / FILES_PER_SPECIES))

    root = args.root or Path(tempfile.mkdtemp(prefix="jibjib-scale-"))
    data_dir, work = root / "birds", root / "work"
    for folder in ("direct", "direct-again"):
        shutil.rmtree(root / folder, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: list[tuple[str, str, str]] = []
    try:
        started = time.perf_counter()
        if not data_dir.exists():
            labels = write_tree(data_dir, args.files, n_species, args.seconds)
        else:
            labels = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        print(f"tree: {args.files:,} files in {n_species} species, {args.seconds:g} s each "
              f"({time.perf_counter() - started:.0f} s to write) in {root}", file=sys.stderr)

        os.sync()  # the tree's write-back must not slow down whichever side runs first

        def timed_direct(folder: str) -> tuple[float, int]:
            started = time.perf_counter()
            computed = direct(data_dir, labels, root / folder / "features")
            return time.perf_counter() - started, computed

        # Direct runs before and after the workflow; the faster of the two is the baseline.
        t_first, computed = timed_direct("direct")
        manifests = [f"results/manifests/{shard}.tsv" for shard in shard_species(labels, SHARDS)]
        t_features, out = snakemake(work, data_dir, *manifests)
        workflow_computed = len(npz_state(work / "results/features"))
        t_second, _ = timed_direct("direct-again")
        t_direct = min(t_first, t_second)
        rows.append(("direct: update_species, 2 processes (before / after the workflow)",
                     f"{t_first:.1f} s / {t_second:.1f} s", f"{computed:,} npz"))
        rows.append(("(b) workflow feature stage, --cores 2", f"{t_features:.1f} s",
                     f"{workflow_computed:,} npz; {t_features / t_direct:.2f} x the faster direct run "
                     f"(target <= 1.3); sources: {sources_note(out)}"))

        t_plan, out = snakemake(work, data_dir, "--dry-run")
        rows.append(("(a) snakemake -n (default target)", f"{t_plan:.1f} s",
                     f"plans {job_counts(out)} (target <= 15 s)"))

        t_aggregate, out = snakemake(work, data_dir, *DATA_TARGETS)
        rows.append(("labels + split", f"{t_aggregate:.1f} s", job_counts(out)))

        t_noop, out = snakemake(work, data_dir, *DATA_TARGETS)
        assert "Nothing to be done" in out, out[-2000:]
        rows.append(("(c) rerun, nothing changed", f"{t_noop:.1f} s", "no jobs (target <= 10 s)"))

        for wav in data_dir.rglob("*.wav"):
            wav.touch()
        t_touch, out = snakemake(work, data_dir, *DATA_TARGETS)
        assert "Nothing to be done" in out, out[-2000:]
        rows.append(("checkout: rerun after touching every WAV", f"{t_touch:.1f} s",
                     f"no jobs; sources: {sources_note(out)}"))

        before = npz_state(work / "results/features")
        write_tree(data_dir, 100, 1, args.seconds, first_species=len(labels))
        t_add, out = snakemake(work, data_dir, *DATA_TARGETS)
        after = npz_state(work / "results/features")
        written = sum(1 for p, state in after.items() if before.get(p) != state)
        rows.append(("(d) rerun after adding a species of 100 files", f"{t_add:.1f} s",
                     f"{written} npz written (target 100); ran {job_counts(out)}"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.files:,} files, {n_species} species, {args.seconds:g} s each, {os.cpu_count()} cores\n")
    print("| step | time | result |\n| --- | --- | --- |")
    for step, seconds, result in rows:
        print(f"| {step} | {seconds} | {result} |")


if __name__ == "__main__":
    main()
