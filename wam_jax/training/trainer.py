"""The training loop: data -> sharded step -> metrics -> checkpoints, resumable and preemptible.

    train(config, workdir)

Re-running the same command on the same workdir resumes from the newest complete checkpoint:
parameters, EMA target, optimizer, step, RNG and the data iterator position (so the loss curve
continues exactly as if never interrupted). SIGTERM (preemption, `scancel`, Ctrl-C) saves a
checkpoint at the current step and returns cleanly.

`train.eval_every` > 0 calls `periodic_eval(step, model, target_encoder)` on the in-memory model at
every such step and logs the `eval/*` scalars it returns; `train.export_at_end` calls
`export(workdir, WORKDIR/export)` once the last step is saved. Both are passed in (`launch/train.py`
passes `wam_jax.inference`'s evaluation and export: training does not import inference).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from data_pipelines import paths
from wam_jax import config_utils, sharding
from wam_jax.training import checkpointing, metrics, workdir_lock
from wam_jax.training import train_step as ts

log = logging.getLogger(__name__)

PeriodicEval = Callable[[int, Any, Any], Mapping[str, float]]  # (step, model, target) -> eval/* scalars
Export = Callable[[str, str], Any]  # (workdir, export dir): writes the export of the latest checkpoint


class NonFiniteError(RuntimeError):
    """`train.max_nonfinite_steps` consecutive steps had a non-finite loss or gradient."""


class NonFiniteCounter:
    """Consecutive and total skipped (non-finite) steps, from the per-step flags the step returns.

    The flags stay on device until a log step reads those up to its own step (a few scalars, read
    where the loop already waits for that step's metrics): no host sync per step."""

    def __init__(self) -> None:
        self.consecutive = 0
        self.total = 0
        self._flags: list[tuple[int, jax.Array]] = []

    def add(self, step: int, flag: jax.Array) -> None:
        self._flags.append((step, flag))

    def update(self, up_to: int) -> tuple[int, int]:
        done = [f for s, f in self._flags if s <= up_to]
        self._flags = [(s, f) for s, f in self._flags if s > up_to]
        for bad in jax.device_get(done):
            self.consecutive = self.consecutive + 1 if bad > 0 else 0
            self.total += int(bad > 0)
        return self.consecutive, self.total


@dataclasses.dataclass
class TrainResult:
    step: int  # the step the run stopped at
    preempted: bool
    resumed_from: int | None
    last_metrics: dict[str, float]
    workdir: str
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last periodic eval
    export_dir: str | None = None  # where `train.export_at_end` wrote the export


class _Preemption:
    """SIGTERM / SIGINT -> a flag the loop checks at step boundaries (never mid-step).

    With several processes, every process must stop at the same step: JAX's preemption sync
    point (through the checkpoint manager) decides there, so the handler is installed only for
    single-process runs, where it is the only notifier.
    """

    def __init__(self, install: bool):
        self.flag = threading.Event()
        self.previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.flag.is_set():  # a second signal: stop now, without the checkpoint
            log.warning("received %s again: exiting without saving", signal.Signals(signum).name)
            self.restore()
            os.kill(os.getpid(), signum)
            return
        log.warning("received %s: saving a checkpoint at the end of this step (send it again to exit "
                    "at once)", signal.Signals(signum).name)
        self.flag.set()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _loader():
    from data_pipelines import loader

    return loader


def _make_iterator(config: Any, seed: int) -> Any:
    return _loader().make_iterator(
        config, split="train", process_index=jax.process_index(), process_count=jax.process_count(), seed=seed
    )


def _log_config(config: Any, mesh: Any, n_params: int, defs_bytes: int) -> None:
    log.info(
        "mesh %s over %d devices (%d processes, %s); %.2fM trained parameters; %.1f MiB state per device",
        dict(mesh.shape), mesh.size, jax.process_count(), jax.devices()[0].device_kind, n_params / 1e6,
        defs_bytes / 2**20,
    )


def train(
    config: Any,
    workdir: str,
    *,
    model_factory: ts.ModelFactory = ts.default_model_factory,
    loss_fn: ts.LossFn | None = None,
    periodic_eval: PeriodicEval | None = None,
    export: Export | None = None,
) -> TrainResult:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint). See the module docstring.

    `periodic_eval` / `export`: what `train.eval_every` / `train.export_at_end` run; without them
    those settings are skipped with a warning."""
    config_utils.validate(config)
    workdir = paths.absolute(workdir)  # gs:// workdirs on pods stay URLs
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = _lock_workdir(workdir)
    try:
        return _train(config, workdir, model_factory=model_factory, loss_fn=loss_fn,
                      periodic_eval=periodic_eval, export=export)
    finally:
        if lock is not None:
            lock.release()


def _lock_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
    """Process 0 takes the run's one lock; every process fails if it could not."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = workdir_lock.acquire(workdir)
        except workdir_lock.WorkdirLockError as e:
            error = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        held = int(multihost_utils.broadcast_one_to_all(np.int32(lock is not None)))
        if not held and jax.process_index() != 0:
            error = f"process 0 could not take the lock of {workdir} (its log names the holder)"
    if error:
        raise workdir_lock.WorkdirLockError(error)
    return lock


def _train(config: Any, workdir: str, *, model_factory: ts.ModelFactory, loss_fn: ts.LossFn | None,
           periodic_eval: PeriodicEval | None, export: Export | None) -> TrainResult:
    loader = _loader()
    if config.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(config.train.compilation_cache_dir))

    # Mesh and batch layout first: they fail fast on bad sizes, before any data or model work.
    mesh = sharding.make_mesh(config.mesh)
    global_batch = int(config.data.global_batch_size)
    num_steps = int(config.train.num_steps)
    sharding.check_global_batch(global_batch, mesh, int(config.optim.grad_accum))
    loader.per_process_batch_size(config, jax.process_count())

    # Dataset statistics and registries travel with every checkpoint (also validates the mixture).
    stats = loader.mixture_info(config)
    built = ts.build(config, mesh, model_factory=model_factory, loss_fn=loss_fn)
    ckpt = checkpointing.Checkpointer(
        str(epath.Path(workdir) / "checkpoints"),
        max_to_keep=int(config.train.max_to_keep),
        keep_period=int(config.train.keep_period),
    )
    from wam_jax.training import device_views  # with the loader: only a run that trains needs them

    place = device_views.batch_placer(config, mesh, global_batch)
    # The device-prefetch iterator is what gets checkpointed: its state is the position right
    # after the last batch handed to the step, however many batches are in flight.
    batches = loader.device_prefetch(_make_iterator(config, int(config.seed)), place,
                                     max(int(config.data.prefetch), 0))
    logger = None
    preemption = None
    finished = False  # the body returned normally (errors while closing are then raised)
    try:
        restored = ckpt.restore_latest(built.abstract.to_dict(), batches, config)
        resumed_from = None
        if restored is None:
            state = built.init(config, model_factory)
            log.info("initialized a new run in %s", workdir)
        else:
            step0, state_dict, _, data_restored = restored
            state = ts.TrainState.from_dict(state_dict)
            resumed_from = step0
            if not data_restored:
                _restart_data(config, step0, batches)
            log.info("resumed from step %d in %s", step0, workdir)
        step = int(jax.device_get(state.step))
        if jax.process_index() == 0:
            metrics.truncate_jsonl(workdir, step)
        if step >= num_steps:
            log.info("step %d >= --config.train.num_steps=%d: nothing to train", step, num_steps)
            finished = True
            return TrainResult(step=step, preempted=False, resumed_from=resumed_from, last_metrics={},
                               workdir=workdir)

        # Compile once, ahead of time, on the abstract shapes: FLOPs and memory for the logs.
        t0 = time.perf_counter()
        compiled = built.compile()
        compile_s = time.perf_counter() - t0
        if config.model.scan_layers or int(config.optim.grad_accum) > 1:
            # XLA counts a loop body once: take the FLOPs of the same step unrolled (lowered only).
            flops = ts.step_flops(config, mesh, model_factory=model_factory, loss_fn=loss_fn)
        else:
            flops = metrics.compiled_flops(compiled)
        mem = metrics.compiled_memory(compiled)
        peak, peak_src = metrics.peak_flops_per_device(jax.devices()[0], str(config.model.dtype))
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(built.abstract.params))
        _log_config(config, mesh, n_params, sharding.bytes_per_device(state.to_dict()))
        log.info(
            "compiled the train step in %.1fs: %.3g FLOPs/step/device, %.1f MiB/device (args %.1f, temp %.1f); "
            "peak %.3g FLOP/s/device (%s)",
            compile_s, flops or 0, mem.get("total_bytes", 0) / 2**20, mem.get("argument_bytes", 0) / 2**20,
            mem.get("temp_bytes", 0) / 2**20, peak, peak_src,
        )

        logger = metrics.MetricsLogger(
            workdir,
            num_steps=num_steps,
            every_steps=int(config.train.log_every),
            profile_steps=int(config.train.profile_steps),
            first_profile_step=step + 5,
        )
        if resumed_from is None:
            logger.write_hparams(config_utils.flat_hparams(config))
        preemption = _Preemption(install=jax.process_count() == 1)
        log_every = max(int(config.train.log_every), 1)
        ckpt_every = int(config.train.checkpoint_every)
        timer = metrics.StepTimer()
        max_nonfinite = int(config.train.max_nonfinite_steps)
        skipped = NonFiniteCounter()
        pending: tuple[int, Any] | None = None
        last: dict[str, float] = {}
        last_saved = step if resumed_from is not None else None
        preempted = False

        def flush(item: tuple[int, Any] | None) -> None:
            nonlocal last
            if item is None:
                return
            s, m = item
            values = {k: float(v) for k, v in jax.device_get(m).items()}
            consecutive, total = skipped.update(s)
            values["train/skipped_steps"] = float(total)
            if consecutive >= max_nonfinite:
                raise NonFiniteError(nonfinite_message(s, consecutive, values, ckpt, workdir))
            values.update(timer.summary(global_batch=global_batch, flops_per_device=flops, peak=peak))
            values.update(metrics.device_memory(mem))
            values["perf/compile_s"] = compile_s
            timer.reset()
            try:
                logger.write(s, values)
            except OSError as e:
                steps = ckpt.all_steps()
                kept = f"the last complete checkpoint is step {steps[-1]}" if steps else "no checkpoint yet"
                raise metrics.MetricsWriteError(
                    f"could not write the metrics of step {s} in {workdir}: {e}; {kept} in {ckpt.directory}. "
                    f"Free space or fix permissions, then re-run the same command to resume.") from e
            last = values

        def save(s: int) -> None:
            nonlocal last_saved
            if last_saved != s:
                ckpt.save(s, state.to_dict(), batches, config, stats)
                last_saved = s

        eval_every = int(config.train.eval_every)
        if eval_every > 0 and periodic_eval is None:
            log.warning("train.eval_every=%d but no periodic_eval was given: no periodic evaluation", eval_every)
            eval_every = 0
        eval_metrics: dict[str, float] = {}

        def evaluate(s: int) -> None:
            """The in-memory model (the state is not donated until the next step starts)."""
            nonlocal eval_metrics
            t0 = time.perf_counter()
            model = built.defs.model(state.params, state.model_state)
            target = built.defs.target_encoder(state.target)
            eval_metrics = {k: float(v) for k, v in periodic_eval(s, model, target).items()}
            logger.write(s, eval_metrics)
            log.info("step %d: periodic evaluation in %.1fs", s, time.perf_counter() - t0)

        while step < num_steps:
            t = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                log.warning("the data iterator ended at step %d (expected an infinite stream)", step)
                break
            timer.add_data_wait(time.perf_counter() - t)
            state, step_metrics = compiled(state, batch)
            step += 1
            skipped.add(step, step_metrics["nonfinite"])
            timer.tick()
            logger.step_hooks(step)
            flush(pending)  # the previous log step's metrics: that step has finished by now
            pending = (step, step_metrics) if (step % log_every == 0 or step == num_steps) else None
            stop = preemption.flag.is_set() or (jax.process_count() > 1 and ckpt.manager.reached_preemption(step))
            if stop or step == num_steps or (ckpt_every > 0 and step % ckpt_every == 0):
                save(step)
            if eval_every > 0 and not stop and (step % eval_every == 0 or step == num_steps):
                flush(pending)
                pending = None
                evaluate(step)
            if stop:
                preempted = True
                log.warning("stopping at step %d after a preemption signal; checkpoint saved", step)
                break
        flush(pending)
        if step > 0:
            save(step)
        export_dir = None
        if not preempted and step >= num_steps and bool(config.train.export_at_end):
            if export is None:
                log.warning("train.export_at_end is set but no export was given: not exporting")
            else:
                ckpt.wait()
                export_dir = export_final(workdir, export)
        finished = True
        return TrainResult(step=step, preempted=preempted, resumed_from=resumed_from, last_metrics=last,
                           workdir=workdir, eval_metrics=eval_metrics, export_dir=export_dir)
    finally:
        if preemption is not None:
            preemption.restore()
        try:
            ckpt.close()
        except checkpointing.CheckpointWriteError:
            if finished:
                raise
            log.exception("while stopping on an earlier error, a pending checkpoint save also failed")
        finally:
            if logger is not None:
                _close_quietly(logger, finished)
            _close_iterator(batches)


def nonfinite_message(step: int, consecutive: int, values: Mapping[str, float], ckpt: Any, workdir: str) -> str:
    """Names the step, the non-finite loss terms and the last good checkpoint (every saved state is
    finite: a non-finite step never changes the state)."""
    bad = sorted(k for k, v in values.items() if not np.isfinite(v))
    steps = ckpt.all_steps()
    good = (f"the last good checkpoint is step {steps[-1]} in {ckpt.directory}" if steps
            else f"no checkpoint was saved in {workdir}")
    return (f"stopped at step {step}: {consecutive} consecutive steps had a non-finite loss or gradient "
            f"(non-finite at step {step}: {', '.join(bad) or 'the update'}); those steps were skipped, so "
            f"{good}. Lower optim.lr, check the data, or raise train.max_nonfinite_steps.")


def export_final(workdir: str, export: Export) -> str | None:
    """`train.export_at_end`: the export of the final checkpoint, with its predictor, in
    WORKDIR/export (process 0 writes it; local or `gs://`): what `WorldModel.load` plans with and
    `model.init_scope='all'` starts a next run from."""
    if jax.process_index() != 0:
        return None
    out = os.path.join(workdir, "export")
    t0 = time.perf_counter()
    export(workdir, out, with_predictor=True)
    log.info("exported the encoder and predictor to %s in %.1fs", out, time.perf_counter() - t0)
    return out


def _restart_data(config: Any, step: int, batches: Any) -> None:
    """Positions a fresh iterator when the saved one cannot be used (the process count changed).

    Grain iterator states are per process and the element-to-process assignment depends on the
    process count. For the in-process pipeline (state `{"next_index": k}`) each process skips to
    `step * global_batch / process_count`: the same point of the global stream for a single
    source, approximately so for a mixture (the interleaving of sources differs). With worker
    processes the state is per worker, and the stream restarts from its beginning.
    """
    per_process = step * int(config.data.global_batch_size) // jax.process_count()
    state = batches.get_state()
    if isinstance(state, dict) and set(state) == {"next_index"}:
        batches.set_state({"next_index": per_process})
        where = f"the saved step's position (element {per_process} of this process's stream)"
    else:
        where = "the beginning of the stream (worker-process iterator states do not transfer)"
    log.warning(
        "the checkpoint at step %d holds no data-iterator state for process %d of %d (it was written with "
        "a different process count); restarting the data at %s, so the data order after resuming "
        "differs from an uninterrupted run",
        step, jax.process_index(), jax.process_count(), where,
    )


def _close_quietly(logger: Any, finished: bool) -> None:
    """Closes the metrics writers; a failure there is raised only if nothing else failed first."""
    try:
        logger.close()
    except OSError:
        if finished:
            raise
        log.exception("closing the metrics writers also failed")


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing workers at exit is best effort
            log.debug("closing the data iterator failed", exc_info=True)
