"""TensorBoard metrics without TensorFlow.

clu's metric writers and periodic actions import TensorFlow, which is 1.3 GB of a 2.9 GB install
and needed only to convert RLDS data. Without it, training writes the same TensorBoard scalars
through tensorboard's own event-file writer (the `tensorboard` package, TensorFlow-free) behind
the methods of clu's `MetricWriter`, and profiles with `jax.profiler` directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def clu_writers() -> tuple[Any, Any] | None:
    """(clu.metric_writers, clu.periodic_actions), or None where TensorFlow is not installed."""
    try:
        from clu import metric_writers, periodic_actions
    except ImportError:
        return None
    return metric_writers, periodic_actions


class EventWriter:
    """Scalars and hyperparameters to `logdir/events.out.tfevents.*`, as clu's SummaryWriter
    writes them (read with `tensorboard --logdir` or tensorboard's EventAccumulator)."""

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(logdir))

    def _add(self, step: int, values: list[Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """As a text summary (the HParams dashboard's protos are clu's TensorFlow part)."""
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import metadata

        text = json.dumps(dict(hparams), indent=2, sort_keys=True, default=str)
        tensor = tensor_pb2.TensorProto(dtype=7, string_val=[text.encode()],  # DT_STRING
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        self._add(0, [summary_pb2.Summary.Value(tag="hparams", tensor=tensor,
                                                metadata=metadata.create_summary_metadata("hparams", ""))])

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class NullWriter:
    """What processes other than 0 write (they log; process 0 writes the files)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        del step, scalars

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Profile:
    """A `jax.profiler` trace of steps `first .. first + num - 1` into `logdir` (clu's Profile
    hook, which needs TensorFlow, does the same)."""

    def __init__(self, logdir: str, num_profile_steps: int, first_profile: int):
        self.logdir, self.first, self.last = str(logdir), int(first_profile), int(first_profile) + int(num_profile_steps)
        self.active = False

    def __call__(self, step: int) -> None:
        import jax

        if step == self.first and not self.active:
            jax.profiler.start_trace(self.logdir)
            self.active = True
        elif step >= self.last and self.active:
            jax.profiler.stop_trace()
            self.active = False
            log.info("profiled steps %d-%d into %s", self.first, self.last - 1, self.logdir)
