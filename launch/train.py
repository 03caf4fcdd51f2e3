"""`wam-train --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=value ...]`

Trains, or resumes when DIR already holds a checkpoint (re-run the same command after a crash or
preemption). Multi-host: on a TPU pod or under SLURM `srun`, `jax.distributed.initialize()` runs
automatically; elsewhere pass `--coordinator=HOST:PORT --num_processes=N --process_id=I` to every
process (e.g. several local processes over 127.0.0.1).

Exit codes: 0 finished or preempted-and-saved, 2 bad input (config, mesh, data, checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wam_jax import config_utils


def _user_errors() -> tuple[type[BaseException], ...]:
    from data_pipelines.records import DatasetFormatError
    from data_pipelines.transforms import BadRecordsError
    from wam_jax.config_utils import ConfigError
    from wam_jax.sharding import MeshConfigError
    from wam_jax.training.checkpointing import CheckpointMismatchError, CheckpointWriteError
    from wam_jax.training.metrics import MetricsWriteError
    from wam_jax.training.trainer import NonFiniteError
    from wam_jax.training.workdir_lock import WorkdirLockError

    return (ConfigError, MeshConfigError, DatasetFormatError, CheckpointMismatchError, NonFiniteError,
            WorkdirLockError, BadRecordsError, CheckpointWriteError, MetricsWriteError)


def build_parser() -> config_utils.FlagParser:
    """wam-train's own flags; `--config.a.b=value` overrides are split off before it parses."""
    from wam_jax.config_utils import FlagParser

    p = FlagParser("wam-train", __doc__, "Any config value can be overridden: --config.a.b=VALUE "
                   "(e.g. --config.train.num_steps=500); an unknown key names the closest ones.")
    p.add_argument("--workdir", metavar="DIR",
                   help="run directory: checkpoints, metrics.jsonl, TensorBoard; resumes if it holds a checkpoint "
                        "(required)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (explicit multi-process runs)")
    p.add_argument("--num_processes", type=int, help="total number of processes (explicit multi-process runs)")
    p.add_argument("--process_id", type=int, help="this process's index in [0, num_processes)")
    p.add_argument("--init_timeout", type=int, default=300, help="seconds to wait for every process to join")
    p.add_argument("--local_device_ids", metavar="I,J,...",
                   help="comma-separated accelerator ids this process drives (e.g. all GPUs of a node when "
                        "running one process per node under SLURM; default: JAX's choice)")
    p.add_argument("--log_level", default="INFO", help="python logging level (DEBUG also shows tracebacks)")
    return p


def parse_flags(argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """(config, flag values) from argv (program name first); the config file runs once.

    Raises ConfigError naming the file / key / flag on bad input; `--help` prints usage and exits 0.
    """
    from wam_jax import config_utils

    overrides, args = build_parser().parse(argv)
    if args.workdir is None:
        raise config_utils.ConfigError("--workdir=DIR is required (checkpoints, metrics.jsonl, TensorBoard)")
    return config_utils.load_config(args.config, overrides), args


def maybe_initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                                 timeout: int = 300, local_device_ids: str | None = None) -> bool:
    """`jax.distributed.initialize`: explicit flags, else automatic on TPU pods / SLURM / Open MPI.

    Returns True when running multi-process. Must run before anything touches the devices.
    """
    import jax

    kw = {}
    if local_device_ids:
        try:
            kw["local_device_ids"] = [int(i) for i in local_device_ids.split(",")]
        except ValueError as e:
            from wam_jax.config_utils import ConfigError

            raise ConfigError(f"--local_device_ids={local_device_ids!r}: expected comma-separated integers") from e
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if explicit:
        missing = [n for n, v in (("--coordinator", coordinator), ("--num_processes", num_processes),
                                  ("--process_id", process_id)) if v is None]
        if missing:
            from wam_jax.config_utils import ConfigError

            raise ConfigError(f"explicit multi-process runs need all of --coordinator, --num_processes, "
                              f"--process_id; missing {', '.join(missing)}")
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout, **kw)
        return True
    if _auto_cluster():
        jax.distributed.initialize(initialization_timeout=timeout, **kw)
        return jax.process_count() > 1
    return False


def _auto_cluster() -> bool:
    """A multi-process launch JAX's cluster detection can configure by itself."""
    env = os.environ
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True  # TPU VM pod slice / multi-slice
    if env.get("SLURM_STEP_ID") is not None and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True  # inside `srun` with several tasks
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return False


def main(argv: Sequence[str]) -> int:
    config, fv = parse_flags(argv)
    level = getattr(logging, str(fv.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
    # basicConfig does nothing when an import (TensorFlow, absl) configured the root logger first,
    # as in `./wam demo`; our loggers then inherit its WARNING and the progress lines vanish.
    for ours in ("wam_jax", "wam-train", "data_pipelines"):
        logging.getLogger(ours).setLevel(level)
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    multi = maybe_initialize_distributed(fv.coordinator, fv.num_processes, fv.process_id, fv.init_timeout,
                                         fv.local_device_ids)

    from absl import flags as absl_flags

    if not absl_flags.FLAGS.is_parsed():  # grain's multiprocess prefetch reads absl flags
        absl_flags.FLAGS.mark_as_parsed()

    from wam_jax.inference import export, periodic_eval
    from wam_jax.training import trainer

    result = trainer.train(config, fv.workdir, periodic_eval=periodic_eval.PeriodicEval(config, fv.workdir),
                           export=export.export)
    log = logging.getLogger("wam-train")
    if result.preempted:
        log.warning("preempted at step %d; re-run the same command to resume", result.step)
    else:
        log.info("done at step %d: %s", result.step, {k: round(v, 5) for k, v in result.last_metrics.items()
                                                       if not k.startswith(("perf/", "memory/"))})
    if multi:
        import jax

        jax.distributed.shutdown()
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: bad input prints one clear line and exits with status 2
    (`--log_level=DEBUG` shows the traceback instead)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        code = main(argv)
    except (*_user_errors(), ValueError) as e:
        if "--log_level=DEBUG" in argv:
            raise
        kind = "" if isinstance(e, _user_errors()) else f"{type(e).__name__}: "
        print(f"wam-train: error: {kind}{e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    run()
