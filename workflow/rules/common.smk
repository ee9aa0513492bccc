# Helpers shared by the rules: config validation, the species inventory and
# how to call the jibjib command.

import dataclasses
import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

# The rules call the package from this checkout, installed or not.
sys.path.insert(0, workflow.basedir)
from jibjib.analysis.checks import check_analysis  # noqa: E402
from jibjib.cli.workflow import check_config  # noqa: E402
from jibjib.core.errors import ConfigError  # noqa: E402
from jibjib.embeddings import cache_plan  # noqa: E402
from jibjib.features.inventory import shard_species  # noqa: E402
from jibjib.models.checkpoint import checkpoint_files  # noqa: E402
from jibjib.selftraining.checks import check_self_training  # noqa: E402


def _stop(message):
    # One line and exit status 1: a traceback would bury the only thing to fix.
    print(f"config: {message}", file=sys.stderr)
    sys.exit(1)


def _validate_config():
    """Fill defaults from the schema; stop with one line naming the bad key."""
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as exc:
        cause = exc.__cause__ or exc.__context__  # jsonschema's ValidationError
        if not hasattr(cause, "absolute_path"):
            raise
        key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
        _stop(f"{key}: {cause.message}")
    try:
        is_demo = config["data_dir"] == "resources/demo_birds"
        return check_config(config, demo_hint="make demo" if is_demo else "")
    except ConfigError as exc:
        _stop(exc)


def _check_analysis(settings):
    try:
        is_demo = "demo_soundscapes" in str(settings.analyze.input_dir) + str(settings.soundscapes.audio_dir)
        return check_analysis(settings, demo_hint="make demo" if is_demo else "", folders=INVENTORY)
    except ConfigError as exc:
        _stop(exc)


# The typed settings (jibjib.core.settings), built once: the rules read them, not `config`.
SETTINGS, INVENTORY = _validate_config()
RECORDINGS = _check_analysis(SETTINGS)  # relative path -> [file] below analyze.input_dir
SPECIES = sorted(INVENTORY)  # the folder names: species, multi-species and background folders alike
SHARD_COUNT = SETTINGS.features.shards
SHARDS = shard_species(SPECIES, SHARD_COUNT)  # shard name -> its species
DATA_DIR = Path(SETTINGS.data_dir)
SOURCES_DIR = Path("results/sources")
MANIFESTS_DIR = Path("results/manifests")
FRONTEND_JSON = json.dumps(dataclasses.asdict(SETTINGS.frontend), sort_keys=True)

# Rules run `python -m jibjib` from this checkout. Inside a conda env `python`
# is the env's; otherwise it is the interpreter running Snakemake, which has
# jibjib's dependencies. (Snakemake formats the prefix too, hence {{{{ }}}}.)
_prefix = f"set -euo pipefail; export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _prefix += f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
shell.prefix(_prefix)


wildcard_constraints:
    shard=r"shard-\d+",


def shard_labels(wildcards):
    """The shard's species as `--label=<name>` options, each quoted for the shell."""
    return " ".join(f"--label={shlex.quote(label)}" for label in SHARDS[wildcards.shard])


def feature_manifests():
    """Every shard's QC rows: what the stages after the features read."""
    return expand(MANIFESTS_DIR / "{shard}.tsv", shard=SHARDS)


def packed_indexes():
    """Every shard's packed index (its array is written by the same job): what training reads."""
    return expand("results/packed/{shard}.tsv", shard=SHARDS)


def training_tasks():
    """(nodes, tasks per node, GPUs per task) of each training job (train.*)."""
    train = SETTINGS.train
    return train.nodes, train.tasks_per_node, train.gpus_per_task


def training_resources():
    """A training job's resources as snakemake-executor-plugin-slurm 2.8 reads them.

    One task: `gpu` GPUs on one node (--gpus; MirroredStrategy uses train.gpus_per_task of them).
    Several: `mpi` makes the jobstep run the rule's shell itself instead of
    wrapping it in a one-task srun, so the shell's own srun (training_launcher)
    starts one process per task; `nodes` and `tasks_per_node` (or, for one
    task per node, `tasks`) shape the allocation, and the GPUs are asked for
    per node (--gres). `tasks_per_gpu=0` stops the plugin from reading `tasks`
    as tasks per GPU, which it does for GPU jobs.
    """
    nodes, per_node, gpus = training_tasks()
    if nodes * per_node == 1:
        return {"nodes": 1, "gpu": gpus}
    resources = {"nodes": nodes, "mpi": "srun"}
    if per_node > 1:
        resources["tasks_per_node"] = per_node
    else:
        resources.update(tasks=nodes, tasks_per_gpu=0)
    if gpus:
        resources["gres"] = f"gpu:{per_node * gpus}"
    return resources


def training_launcher(wildcards, threads):
    """What starts `jibjib train`: nothing for one task; with several, srun, one process per task.

    Only inside a SLURM job (SLURM_JOB_ID set): elsewhere the same rule
    trains in one process. srun is told the task geometry and the CPUs
    because the jobstep clears the SLURM_* variables it would read them from.
    """
    nodes, per_node, _ = training_tasks()
    if nodes * per_node == 1:
        return ""
    return (f"${{SLURM_JOB_ID:+srun --nodes={nodes} --ntasks={nodes * per_node} --ntasks-per-node={per_node}"
            f" --cpus-per-task={threads} --distribution=block --kill-on-bad-exit=1}}")


# Whether VGGish's head trains from the embedding cache (rule embed), and why not.
EMBEDDING_PLAN = cache_plan(SETTINGS.vggish.trainable, SETTINGS.vggish.embedding_cache)
EMBEDDINGS_USED = "vggish" in SETTINGS.models and EMBEDDING_PLAN.used


def embedding_indexes(model):
    """Every shard's embedding index when `model` trains from the cache; none otherwise."""
    if model != "vggish" or not EMBEDDINGS_USED:
        return []
    return expand("results/embeddings/{shard}.tsv", shard=SHARDS)


def embeddings_option(model):
    """`--embeddings <index>...` for jibjib train, or nothing."""
    indexes = embedding_indexes(model)
    return " ".join(["--embeddings", *map(shlex.quote, indexes)]) if indexes else ""


def vggish_checkpoint_files():
    """The files of vggish.checkpoint (a V1 file, or a V2 prefix's index and data): a new checkpoint reruns embed."""
    # (Not named `checkpoint`: a Snakemake keyword.)
    vggish_checkpoint = SETTINGS.vggish.checkpoint
    return list(map(str, checkpoint_files(vggish_checkpoint))) if vggish_checkpoint else []


def embed_weights_options():
    """Where the frozen trunk's weights come from: the checkpoint, or train.seed's random draw
    (only then is the seed a parameter of embed, so a seed change without a checkpoint reruns it)."""
    vggish_checkpoint = SETTINGS.vggish.checkpoint
    if vggish_checkpoint:
        return f"--checkpoint={shlex.quote(vggish_checkpoint)}"
    return f"--seed={SETTINGS.train.seed}"


def training_settings(model):
    """The JSON handed to `jibjib train`: shared train settings plus the model's own."""
    return SETTINGS.run(model).to_json()


MODEL_NAMES = ("vggish", "convlstm")


def current_export(model):
    """The export rule's output: results/export/<model>/current.json, naming the version folder beside it that is
    in use. The version folders are not Snakemake outputs, so a rerun keeps the older ones (export.keep_versions)
    for a running TF Serving; the analysis rules depend on this file and give it to --model."""
    return f"results/export/{model}/current.json"


def report_place(model):
    """Where an evaluation output sits in the Snakemake report."""
    return {"category": "Evaluation", "subcategory": model}


def model_targets():
    """Per configured model: its evaluation and its export (which need the trained model),
    and where configured its soundscape evaluation and its analysis of field recordings."""
    targets = [target for model in SETTINGS.models
               for target in (f"results/eval/{model}/metrics.json", current_export(model))]
    if SETTINGS.soundscapes.audio_dir:
        targets += [f"results/eval/{model}/soundscapes.json" for model in SETTINGS.models]
    targets += [f"results/selftrain/{model}/report.md" for model in SETTINGS.self_training_models]
    for model in SETTINGS.analysis_models:
        targets.append(f"results/analysis/{model}/detections.tsv")
        if SETTINGS.analyze.review.enabled:
            targets.append(f"results/analysis/{model}/review/index.html")
        if SETTINGS.analyze.verifications:
            targets.append(f"results/analysis/{model}/verification/verification.tsv")
    return targets


def detection_options():
    """analyze.merge and analyze.min_score as options: of analyze, and of evaluate-soundscapes, which judges the
    detections analyze delivers."""
    section = SETTINGS.analyze
    options = ["--merge"] if section.merge else []
    if section.min_score is not None:
        options.append(f"--min-score={section.min_score}")
    return " ".join(options)


def format_options():
    """analyze.format and analyze.label_column: the tables of jibjib analyze and analysis-tables."""
    section = SETTINGS.analyze
    return f"--format={','.join(section.format)} --label-column={shlex.quote(section.label_column)}"


def table_options():
    """The detection settings of analyze and its table formats: as options of jibjib analyze."""
    return f"{format_options()} {detection_options()}".strip()


def field_options():
    """The species lists and the site and time patterns of the analysis of analyze.input_dir."""
    section = SETTINGS.analyze
    options = {"--species-list": section.species_lists, "--site-pattern": section.site_pattern,
               "--time-pattern": section.time_pattern}
    return " ".join(f"{option}={shlex.quote(value)}" for option, value in options.items() if value)


def content_digest(path, files=None):
    """SHA-256 of a small file, or of a folder's files (names and contents; `files`: only these of it): a rule
    parameter, so that a rule reruns when what it reads changed, not when it was touched ('' for no path)."""
    import hashlib

    from jibjib.core.fsutil import sha256_file

    if not path:
        return ""
    folder = Path(path)
    if files is None:
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(folder).as_posix() if folder.is_dir() else ''}\0".encode())
        digest.update(sha256_file(file).encode())  # read in blocks: recordings can be large
    return digest.hexdigest()


def unlabelled_digest():
    """The content digest of self_training.audio_dir's recordings (audio files only: a stray .DS_Store reruns
    nothing). Computed at every start of Snakemake, about a second per GB; '' without self-training."""
    if not SETTINGS.self_training_models:
        return ""
    from jibjib.selftraining.unlabelled import unlabelled_files

    audio_dir = SETTINGS.self_training.audio_dir
    return content_digest(audio_dir, unlabelled_files(Path(audio_dir)))

def review_options():
    """analyze.review as options of jibjib review."""
    review = SETTINGS.analyze.review
    return f"--top={review.top} --score-bins={review.score_bins} --per-bin={review.per_bin} --seed={review.seed}"


def verifications_file(model):
    """analyze.verifications for `model` ({model} in the path replaced)."""
    return SETTINGS.analyze.verifications.replace("{model}", model)


def hop_option():
    hop = SETTINGS.analyze.hop_seconds
    return "" if hop is None else f"--hop={hop}"


# analyze.engine decides where the analysis jobs run: the SavedModel in TensorFlow wants the GPU (gpu=1; the
# rules keep their names, which profiles/slurm routes to the GPU partition); LiteRT runs on the CPU (no gpu
# resource, so a CPU-only workstation runs several jobs at once; the rules are named <name>_cpu and go to
# the CPU partition). Threads: the GPU job's front end and TensorFlow; the CPU job's LiteRT (Snakemake
# gives a job at most --cores).
ANALYSIS_ON_GPU = SETTINGS.analyze.engine == "savedmodel"
ANALYSIS_THREADS = 4 if ANALYSIS_ON_GPU else 8


def analysis_rule_name(name):
    return name if ANALYSIS_ON_GPU else f"{name}_cpu"


def analysis_resources(runtime):
    """mem_mb (bounded whatever the number and length of the files: docs/analysis.md), runtime, and gpu=1 on
    the GPU engine."""
    return {"mem_mb": 4000, "runtime": runtime, **({"gpu": 1} if ANALYSIS_ON_GPU else {})}


def engine_option():
    return f"--engine={SETTINGS.analyze.engine}"



# Self-training (selftraining.smk): round r's teacher is round r - 1's student, round 1's the model trained on
# the labelled data; its pseudo-labels take the teacher's val window thresholds.
SELFTRAIN_DIR = "results/selftrain"


def _check_self_training(settings):
    try:
        is_demo = str(settings.self_training.audio_dir).endswith("demo_field")
        check_self_training(settings, demo_hint="make demo" if is_demo else "")
    except ConfigError as exc:
        _stop(exc)


_check_self_training(SETTINGS)


def teacher_dir(wildcards):
    """The folder of the teacher of `wildcards.round` (model.keras, train.json)."""
    r = int(wildcards.round)
    return f"results/models/{wildcards.model}" if r == 1 else f"{SELFTRAIN_DIR}/{wildcards.model}/round-{r - 1}/model"


def teacher_eval_dir(wildcards):
    """The evaluation of the teacher of `wildcards.round` (its thresholds.tsv)."""
    r = int(wildcards.round)
    return f"results/eval/{wildcards.model}" if r == 1 else f"{SELFTRAIN_DIR}/{wildcards.model}/round-{r - 1}/eval"


def self_training_options():
    """The keys of self_training that choose the pseudo-labels, as the JSON of jibjib pseudo-label --settings
    (only those: a parameter of the rule, so that more rounds or another folder do not redo the first rounds)."""
    chosen = ("threshold_scale", "negative_scale", "negatives_per_positive")
    return json.dumps({key: getattr(SETTINGS.self_training, key) for key in chosen}, sort_keys=True)


def round_files(wildcards, teacher, student):
    """The teacher's `teacher` (a path below results/eval/<model>/), then each round's `student` (below its
    folder): what the self-training report reads."""
    rounds = range(1, SETTINGS.self_training.rounds + 1)
    return ([f"results/eval/{wildcards.model}/{teacher}"]
            + [f"{SELFTRAIN_DIR}/{wildcards.model}/round-{r}/{student}" for r in rounds])
