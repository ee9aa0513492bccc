"""Which tf.distribute strategy a training process uses: one SLURM job over several nodes, or one machine.

Inside a SLURM job step of more than one task (`srun` started one process
per task), every task is a worker of one MultiWorkerMirroredStrategy; the
workers find each other through TensorFlow's SlurmClusterResolver. Otherwise
MirroredStrategy spans the first `train.gpus_per_task` local GPUs, or the
default strategy runs on the CPU. Worker 0 is the chief: the only one that
writes files.

`JIBJIB_CPU_REPLICAS=N` (a testing aid, docs/cluster.md) splits the CPU of a
machine without GPUs into N logical devices, so that MirroredStrategy trains
over N replicas exactly as over N GPUs.

The strategy must exist before TensorFlow initialises its devices (the
resolver sets CUDA_VISIBLE_DEVICES per task and MultiWorkerMirroredStrategy
starts this task's gRPC server), so `choose_strategy` is the first thing a
training run calls.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Callable

import tensorflow as tf

from jibjib.core.errors import ConfigError
from jibjib.training.inputs.order import InputShare

if TYPE_CHECKING:
    import keras

# Each job's workers listen on PORT_FIRST + a job-dependent offset + their
# index among the tasks of their node: two training jobs sharing a node (or a
# resubmitted job whose old sockets linger) then use different ports.
PORT_FIRST, PORT_SPAN, PORTS_PER_JOB = 20000, 40000, 64
CPU_REPLICAS = "JIBJIB_CPU_REPLICAS"


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy of this process and its place among the workers."""

    strategy: tf.distribute.Strategy
    workers: int  # processes training the model together (1 without SLURM)
    worker: int  # this process's index; 0 is the chief
    addresses: tuple[str, ...] = ()  # host:port of every worker, in index order (multi-worker only)

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    @property
    def replicas(self) -> int:
        """Replicas over all workers: the global batch is this many per-replica batches."""
        return self.strategy.num_replicas_in_sync

    def same_on_every_worker(self, value: int) -> bool:
        """Whether every worker passes the same `value`; returns only once all have called it (a barrier).

        Workers decide things from files (whether to resume, from which
        epoch) that the chief is about to change: each reads them, then they
        agree here before the chief touches them.
        """
        if self.workers == 1:
            return True
        # Collectives only sum: n values are all equal when n * sum(v^2) == sum(v)^2.
        local = tf.constant([1, value, value * value], tf.int64)
        count, total, squares = (int(x) for x in self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(lambda: tf.identity(local)), axis=None).numpy())
        return count * squares == total * total

    def build_for_fit(self, model: "keras.Model", batch_spec: object) -> None:
        """Build `model`'s metric and loss state from the input's element spec, as fit would, but without data.

        With several replicas Keras 3.15's fit and evaluate build a compiled
        model from a first batch that they average over all replicas
        (`strategy.reduce("MEAN", batch)`), which fails for a batch with a
        bool mask (every gathered batch has one, jibjib.training.inputs) and,
        under MultiWorkerMirroredStrategy, for any batch of nested inputs. The
        build needs only shapes and dtypes, so it is done here from the
        dataset's element spec, inside the scope, and that step of fit is
        turned off for this model.

        Keras then averages each step's logs over the replicas with
        `strategy.reduce("MEAN", value, axis=0)`, which fails for the scalar
        metrics (tensorflow/tensorflow#72388): the steps here return each
        scalar as a vector of one, whose mean over axis 0 and all replicas is
        what single-machine MirroredStrategy reports (several workers only). One
        replica: nothing changes.
        """
        if self.replicas == 1:
            return
        # A dataset distributed per worker (shard_input's `sharded`) has one spec per local replica, all alike.
        batch_spec = tf.nest.map_structure(lambda spec: getattr(spec, "_value_specs", (spec,))[0], batch_spec)
        with self.strategy.scope():
            model._symbolic_build(data_batch=batch_spec)
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
        if self.workers == 1:
            return
        model.train_step = _scalars_as_vectors(model.train_step)
        model.test_step = _scalars_as_vectors(model.test_step)

    @property
    def input_share(self) -> InputShare:
        """This worker's share of each global batch, for an input that reads only its share (the packed one)."""
        return InputShare(self.worker, self.workers)

    def shard_input(self, dataset: tf.data.Dataset, batch_size: int, training: bool, examples: int | None = None,
                    sharded: bool = False) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """`dataset` (global batches of `batch_size`) as the replicas split it; unchanged for one replica.

        Every replica gets at least one example of every step. tf.distribute
        splits a batch of n examples into shares of ceil(n / replicas),
        greedily, so a partial last batch leaves replicas empty (an empty share
        makes BatchNorm's statistics NaN, or with masked BatchNorm pulls them
        towards 0, crashes the CPU's max-pool gradient and fails on GPUs).
        Validation, which must see every example once, is handed to the
        replicas share by share (`val_replica_batches`, from its number of
        `examples`), on one machine or several.

        Training on one machine: the batches are cut to a multiple of the
        replicas (`even_shares`). Several workers: every worker runs the same
        (seeded) pipeline and only full global batches are kept (the examples
        are reshuffled each epoch, so each time others are left out). With
        `sharded` the dataset already holds only this worker's share of each
        global batch (it read only that, see `input_share`), and each of this
        worker's replicas takes its slice of it; otherwise every worker keeps
        its share of what it read (the pipelines read from arrays and numpy
        functions, not files, so tf.data's FILE sharding could not apply; DATA
        is said, not guessed).
        """
        if self.replicas == 1:
            return dataset
        if not training:
            return self._val_shares(dataset, batch_size, examples)
        if self.workers == 1:
            return even_shares(dataset, self.replicas)
        if sharded:
            per_replica = batch_size // self.replicas
            return self._per_worker(lambda: dataset.rebatch(per_replica, drop_remainder=True))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.rebatch(batch_size, drop_remainder=True).with_options(options)

    def _val_shares(self, dataset: tf.data.Dataset, batch_size: int,
                    examples: int | None) -> tf.distribute.DistributedDataset:
        """Validation batches as shares of every step, each replica's >= 1 (`val_replica_batches`); with several
        workers each keeps its replicas' shares of every step (every worker reads the whole split, as DATA
        sharding did)."""
        if examples is None:
            raise ValueError("validation over several replicas needs its number of examples")
        shares = dataset.rebatch(val_replica_batches(examples, batch_size, self.replicas))
        if self.workers > 1:
            local = self.replicas // self.workers
            shares = shares.enumerate().filter(
                lambda i, share: i % self.replicas // local == self.worker).map(lambda i, share: share)
        return self._per_worker(lambda: shares)

    def _per_worker(self, pipeline: Callable[[], tf.data.Dataset]) -> tf.distribute.DistributedDataset:
        """One input pipeline on this worker whose consecutive elements are its replicas' batches of a step."""
        def this_workers_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
            assert context.input_pipeline_id == self.worker, (context.input_pipeline_id, self.worker)
            return pipeline()

        return self.strategy.distribute_datasets_from_function(this_workers_pipeline)


def even_shares(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Training batches cut to a multiple of `replicas` examples: each replica gets as many (at least one).

    Only the epoch's last, partial batch changes: it loses its last fewer than
    `replicas` examples (others each epoch, as the examples are reshuffled),
    or goes if fewer are left. Equal shares also keep each step's loss the
    mean over its examples, as on one replica (Keras averages per replica).
    """
    def trim(*batch: Any) -> Any:
        structure = batch if len(batch) > 1 else batch[0]
        size = tf.shape(tf.nest.flatten(structure)[0])[0]
        return tf.nest.map_structure(lambda t: t[: size - size % replicas], structure)

    def not_empty(*batch: Any) -> tf.Tensor:
        return tf.shape(tf.nest.flatten(batch)[0])[0] > 0

    return dataset.map(trim).filter(not_empty)


def val_replica_batches(examples: int, batch_size: int, replicas: int) -> list[int]:
    """Each replica's share of each validation step, step by step: every example once, every share >= 1.

    The steps are full batches and the partial last one; a last batch of
    fewer examples than replicas joins the batch before it (which grows by
    less than the replicas). A step's shares differ by at most one example.
    """
    full, tail = divmod(examples, batch_size)
    steps = [batch_size] * full + ([tail] if tail else [])
    if 0 < tail < replicas and full:
        steps[-2:] = [batch_size + tail]
    if not steps or steps[-1] < replicas:
        raise ConfigError(f"the val split gives {examples} examples, fewer than the {replicas} replicas: "
                          "validation needs at least one example per replica")
    return [size // replicas + (replica < size % replicas) for size in steps for replica in range(replicas)]


def slurm_tasks(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> int:
    """Tasks of the SLURM job step this process belongs to (1 outside SLURM or in a one-task step)."""
    if "SLURM_PROCID" not in environ:
        return 1
    # SLURM_STEP_NUM_TASKS is the step's (what srun started); SLURM_NTASKS the job's.
    return int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 1)


def port_base(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> int:
    job = int(environ.get("SLURM_JOB_ID", "0") or 0)
    return PORT_FIRST + (job * PORTS_PER_JOB) % PORT_SPAN


def node_address(name: str) -> str:
    """An address of SLURM node `name` that the other workers can connect to.

    SLURM names nodes freely (NodeName) and reaches them at NodeAddr: where the
    name is not a resolvable host name, the node's NodeAddr is used.
    """
    try:
        socket.getaddrinfo(name, None)
        return name
    except socket.gaierror:
        pass
    shown = subprocess.run(["scontrol", "-o", "show", "node", name], capture_output=True, text=True, timeout=30)
    for field in shown.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    raise RuntimeError(f"SLURM node {name!r} is no host name, and scontrol names no NodeAddr for it: "
                       f"{shown.stderr.strip()[:200]}")


def _gpus_per_task(requested: int | None) -> int:
    """GPUs for each worker: as configured, else those SLURM made visible to this task (none on CPU nodes)."""
    if requested is not None:
        return int(requested)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip()])


def _scalars_as_vectors(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def step_with_vector_logs(data: Any) -> Any:
        return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))

    return step_with_vector_logs


class _SlurmWorkers(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """SlurmClusterResolver that also serves workers without GPUs.

    Its placement gives each task a slot of `gpus_per_task` GPUs and cannot
    count zero (a range of step 0), so CPU workers get a one-GPU slot that
    nobody uses: CUDA_VISIBLE_DEVICES is left alone and num_accelerators,
    from which MultiWorkerMirroredStrategy builds its devices, tells the truth.
    """

    def __init__(self, gpus_per_task: int, port_base: int, tasks_per_node: dict[str, int]) -> None:
        slot = max(1, gpus_per_task)
        super().__init__(port_base=port_base, tasks_per_node=tasks_per_node, gpus_per_task=slot,
                         gpus_per_node=slot * max(tasks_per_node.values()), auto_set_gpu=gpus_per_task > 0)
        self.gpus_per_worker = gpus_per_task

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):  # noqa: ANN001, ANN201 - TF API
        return {"GPU": self.gpus_per_worker}


def _multi_worker(gpus_per_task: int | None) -> Distribution:
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
        expand_hostlist, expand_tasks_per_node,
    )

    names = expand_hostlist(os.environ["SLURM_STEP_NODELIST"])
    counts = expand_tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"])
    tasks_per_node = {node_address(name): count for name, count in zip(names, counts)}
    gpus = _gpus_per_task(gpus_per_task)
    visible_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    resolver = _SlurmWorkers(gpus, port_base=port_base(), tasks_per_node=tasks_per_node)
    spec = resolver.cluster_spec()
    addresses = tuple(spec.job_tasks("worker"))
    worker = int(resolver.task_id)
    # The resolver places task i on the i-th slot of its hosts in sorted order;
    # SLURM's default block distribution does the same. A task listed on
    # another host would wait forever for a server that never starts.
    mine = node_address(os.environ.get("SLURMD_NODENAME", names[0]))
    if addresses[worker].rsplit(":", 1)[0] != mine:
        raise RuntimeError(f"worker {worker} runs on {mine} but the cluster places it at {addresses[worker]}: "
                           "start the tasks with the block distribution (srun --distribution=block)")
    if gpus == 0 and visible_before is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # no worker takes a GPU it was not given
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    # The strategy's coordination service catches SIGTERM for its preemption notices (which nothing here
    # uses), so scancel or the job's time limit left the workers training until SLURM's SIGKILL, KillWait
    # later. The default action again: a worker stops at once, like a single-task training; the saved
    # state is whole (atomic writes), so a resubmission resumes from it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return Distribution(strategy, workers=len(addresses), worker=worker, addresses=addresses)


def choose_strategy(gpus_per_task: int | None = None) -> Distribution:
    """MultiWorkerMirroredStrategy in a SLURM step of several tasks, else MirroredStrategy or the default.

    `gpus_per_task`: GPUs each worker uses (the workflow's
    train.gpus_per_task; None: every visible GPU, or in a multi-worker run as
    many as SLURM made visible). A multi-worker run prints one line naming
    the workers.
    """
    if slurm_tasks() > 1:
        if cpu_replicas():
            raise ConfigError(f"{CPU_REPLICAS} (a testing aid) splits the CPU of a single-process run, not the "
                              f"{slurm_tasks()} tasks of this SLURM step")
        distribution = _multi_worker(gpus_per_task)
        print(f"worker {distribution.worker} of {distribution.workers} "
              f"({', '.join(distribution.addresses)}; chief {distribution.addresses[0]}), "
              f"{distribution.replicas} replica(s) in all", file=sys.stderr, flush=True)
        return distribution
    devices = local_devices(gpus_per_task)
    # MirroredStrategy over the chosen GPUs (or the CPU's logical devices); the default (CPU) strategy otherwise.
    strategy = tf.distribute.MirroredStrategy(devices) if devices else tf.distribute.get_strategy()
    return Distribution(strategy, workers=1, worker=0)


def cpu_replicas(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> int:
    """JIBJIB_CPU_REPLICAS: logical CPU devices to train over (0 when unset)."""
    value = environ.get(CPU_REPLICAS, "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{CPU_REPLICAS}={value!r}: must be a whole number of replicas, at least 1")
    return int(value)


def chosen_gpus(visible: list[Any], gpus_per_task: int | None) -> list[Any]:
    """The GPUs a single-process run trains on: the first `gpus_per_task` of those visible (all with None)."""
    return list(visible) if gpus_per_task is None else list(visible)[:max(0, gpus_per_task)]


def local_devices(gpus_per_task: int | None) -> list[str]:
    """Set up this machine's devices before TensorFlow initialises them; the devices to mirror over
    ([]: the default strategy, one replica).

    `gpus_per_task` GPUs of those visible (the others are hidden from
    TensorFlow), or with JIBJIB_CPU_REPLICAS the CPU split into that many
    logical devices.
    """
    split = cpu_replicas()
    gpus = tf.config.list_physical_devices("GPU")  # lists without initialising the devices
    try:
        if split:
            if gpus:
                raise ConfigError(f"{CPU_REPLICAS} splits the CPU of a machine without GPUs (a testing aid), but "
                                  f"this one sees {len(gpus)}: hide them with CUDA_VISIBLE_DEVICES=")
            cpu = tf.config.list_physical_devices("CPU")[0]
            configured = tf.config.get_logical_device_configuration(cpu)
            if configured is None or len(configured) != split:  # the same split again: nothing to do
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * split)
            return [f"/cpu:{i}" for i in range(split)] if split > 1 else []
        used = chosen_gpus(gpus, gpus_per_task)
        if len(used) < len(gpus):
            tf.config.set_visible_devices(used, "GPU")
    except RuntimeError as exc:  # TensorFlow had set up its devices already
        raise RuntimeError(f"the training's devices must be chosen before TensorFlow starts: {exc}") from None
    if gpus and gpus_per_task and len(gpus) < gpus_per_task:
        print(f"train: train.gpus_per_task is {gpus_per_task}, but only {len(gpus)} GPU(s) are visible: "
              f"training on {len(gpus)}", file=sys.stderr, flush=True)
    return [f"/gpu:{i}" for i in range(len(used))]
