"""Held-out evaluation during training (`train.eval_every`): the in-memory model, no checkpoint
read back."""

from __future__ import annotations

import os
from typing import Any

import jax

from wam_jax.inference import eval_report
from wam_jax.inference.evaluation import EVAL_DIR, Evaluator, write_metrics


class PeriodicEval:
    """`trainer.train(periodic_eval=PeriodicEval(config, workdir))`: every `train.eval_every` steps,
    the held-out metrics of the in-memory model (no checkpoint read back; one `Evaluator`, so the
    step compiles once), written to WORKDIR/eval/step_<step>/metrics.json and returned as flat
    `eval/*` scalars for the training logs."""

    def __init__(self, config: Any, workdir: str):
        self.config, self.workdir = config, workdir
        self.evaluator: Evaluator | None = None  # built on first use: the trainer checks data and mesh first

    def __call__(self, step: int, model: Any, target: Any) -> dict[str, float]:
        from data_pipelines import loader

        if self.evaluator is None:
            max_clips = int(self.config.train.eval_max_clips) or None
            self.evaluator = Evaluator(self.config, loader.mixture_info(self.config), max_clips=max_clips)
        results = {"workdir": self.workdir, "step": int(step), **self.evaluator(model, target)}
        if jax.process_index() == 0:
            write_metrics(results, os.path.join(self.workdir, EVAL_DIR, f"step_{step}"))
        return eval_report.flat_scalars(results, prefix="eval/")
