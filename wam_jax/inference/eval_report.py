"""How evaluation results are shown: the plain-text table `wam-eval` prints, flat scalars for the
training logs, and PNG plots. Decorations only: `evaluation` writes metrics.json before any of them,
and a plot that fails is a warning naming the plot, never a lost evaluation.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def flat_scalars(results: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The headline numbers of `evaluate`'s results as flat scalars (for metric writers):
    per horizon h `pred_l1/h`, `copy_l1/h`, `l1_vs_copy/h`, `shuffled_vs_true/h`; per embodiment `act/<emb>/mae|r2`;
    `rank/top1`, `rank/normalized`; `health/*`; the same under `<kind>/` per source kind."""

    def group(r: Mapping[str, Any], pre: str) -> dict[str, float]:
        out: dict[str, float] = {}
        pred = r.get("prediction")
        if pred:
            for h, (l1, c, ratio) in enumerate(zip(pred["l1"], pred["copy_l1"], pred["l1_vs_copy"], strict=True), 1):
                out[f"{pre}pred_l1/{h}"], out[f"{pre}copy_l1/{h}"], out[f"{pre}l1_vs_copy/{h}"] = l1, c, ratio
            for h, ratio in enumerate(pred.get("shuffled_vs_true", []), 1):
                out[f"{pre}shuffled_vs_true/{h}"] = ratio
        for emb, a in r.get("action", {}).items():
            out[f"{pre}act/{emb}/mae"], out[f"{pre}act/{emb}/r2"] = a["mae_mean"], a["r2_mean"]
            out[f"{pre}act/{emb}/policy_mae"] = a["policy_mae_mean"]
            if "flow_mae_mean" in a:
                out[f"{pre}act/{emb}/flow_mae"] = a["flow_mae_mean"]
        if "ranking" in r:
            out[f"{pre}rank/top1"] = r["ranking"]["top1"]
            out[f"{pre}rank/normalized"] = r["ranking"]["normalized_rank"]
        for k, v in r.get("health", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{pre}health/{k}"] = float(v)
        return out

    flat = group(results, prefix)
    for kind, r in results.get("per_kind", {}).items():
        if len(results.get("per_kind", {})) > 1:
            flat.update(group(r, f"{prefix}{kind}/"))
    return {k: float(v) for k, v in flat.items()}


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}"


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text summary of `evaluate`'s results (what `wam-eval` prints)."""
    lines = [f"World model evaluation: {results.get('workdir')} (step {results.get('step')}), "
             f"{results.get('num_clips')} clips of {results.get('num_frames')} frames from {results.get('data')}"]
    pred = results.get("prediction")
    if pred:
        hs = range(1, len(pred["l1"]) + 1)
        lines += ["", "Latent prediction (rollout from frame 0)   " + "".join(f"   h={h:<3d}" for h in hs)]
        for label, key in (("  model L1", "l1"), ("  copy-last-frame L1", "copy_l1"), ("  model / copy L1", "l1_vs_copy"),
                           ("  model cosine", "cos"), ("  copy-last-frame cosine", "copy_cos"),
                           ("  model / copy L1, latent-action cond.", "latent_l1_vs_copy"),
                           ("  shuffled actions / true actions L1", "shuffled_vs_true")):
            lines.append(f"{label:<43s}" + "".join(f"{_fmt(v):>8s}" for v in pred[key]))
    for emb, act in (results.get("action") or {}).items():
        lines += ["", f"Action heads, embodiment {emb!r} ({act['num_transitions']} labeled transitions, robot units)",
                  f"  {'dim':<12s}{'IDM MAE':>10s}{'IDM R^2':>10s}{'policy MAE':>12s}"
                  + (f"{'flow MAE':>12s}" if "flow_mae" in act else "")]
        flow = act.get("flow_mae", [None] * len(act["dims"]))
        for name, mae, r2, pm, fm in zip(act["dims"], act["mae"], act["r2"], act["policy_mae"], flow, strict=False):
            lines.append(f"  {name:<12s}{_fmt(mae, 4):>10s}{_fmt(r2):>10s}{_fmt(pm, 4):>12s}"
                         + (f"{_fmt(fm, 4):>12s}" if fm is not None else ""))
    rk = results.get("ranking")
    if rk:
        lines += ["", f"Action ranking: true action among {rk['num_candidates']} candidates "
                      f"({rk['num_transitions']} transitions): mean rank {_fmt(rk['mean_rank'], 2)} "
                      f"(chance {_fmt(rk['chance_rank'], 1)}), top-1 {_fmt(rk['top1'])}, "
                      f"normalized rank {_fmt(rk['normalized_rank'])} (0 best, 0.5 chance)"]
    h = results.get("health")
    if h:
        s = (f"Representation: target std {_fmt(h['target_std'])}, effective rank "
             f"{_fmt(h['effective_rank'], 1)} / {h['latent_dim']}")
        if "latent_action_usage" in h:
            s += (f", latent-action codes {h['latent_action_codes_used']} used "
                  f"(usage {_fmt(h['latent_action_usage'])}, perplexity {_fmt(h['latent_action_perplexity'], 1)})")
        elif "latent_action_std" in h:
            s += f", latent-action std {_fmt(h['latent_action_std'])}"
        lines += ["", s]
    groups = [(f"[{k}]", v) for k, v in (results.get("per_kind") or {}).items()]
    groups += [(name, v) for name, v in (results.get("per_source") or {}).items()]
    if groups:
        lines += ["", f"  {'group':<24s}{'clips':>6s}{'L1 h=1':>9s}{'copy h=1':>10s}{'L1 h=k':>9s}{'copy h=k':>10s}"
                      f"{'IDM R^2':>9s}{'rank':>7s}{'eff.rank':>9s}"]
        for name, g in groups:
            p = g.get("prediction") or {}
            acts = list((g.get("action") or {}).values())
            r2 = acts[0]["r2_mean"] if acts else None
            rank = (g.get("ranking") or {}).get("mean_rank")
            er = (g.get("health") or {}).get("effective_rank")
            l1 = p.get("l1") or [None]
            c1 = p.get("copy_l1") or [None]
            lines.append(f"  {name[:24]:<24s}{g.get('num_clips', 0):>6d}{_fmt(l1[0]):>9s}{_fmt(c1[0]):>10s}"
                         f"{_fmt(l1[-1]):>9s}{_fmt(c1[-1]):>10s}{_fmt(r2):>9s}{_fmt(rank, 2):>7s}"
                         f"{_fmt(er, 1):>9s}")
    return "\n".join(lines)


def write_plots(results: Mapping[str, Any], out_dir: str) -> list[str]:
    """PNG plots next to metrics.json (prediction error per horizon, action error per dimension);
    returns the paths written. A plot that fails is logged as a warning naming it and skipped."""
    paths = []
    for name, draw in PLOTS.items():
        path = os.path.join(out_dir, name)
        try:
            if draw(results, path):
                paths.append(path)
        except Exception as e:  # noqa: BLE001 - a decoration must never cost the evaluation
            log.warning("plot %s failed (%s: %s); the metrics are written", name, type(e).__name__, e)
    return paths


def _save(fig: Any, path: str) -> None:
    """PNG through `etils.epath`, so plots land next to metrics.json on `gs://` as well."""
    from etils import epath

    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=120)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_prediction(results: Mapping[str, Any], path: str) -> bool:
    """Rollout latent L1 per horizon, overall and per source, next to the copy-last-frame baseline."""
    pred = results.get("prediction")
    if not pred:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        hs = np.arange(1, len(pred["l1"]) + 1)
        ax.plot(hs, pred["l1"], "o-", label="model (all)")
        ax.plot(hs, pred["copy_l1"], "k--", label="copy last frame")
        for name, g in (results.get("per_source") or {}).items():
            p = g.get("prediction")
            if p:
                ax.plot(hs, p["l1"], ".:", label=f"model: {name}")
        ax.set_xlabel("horizon (steps)")
        ax.set_ylabel("latent L1")
        ax.set_xticks(hs)
        ax.legend(fontsize=7)
        ax.set_title(f"Rollout error, step {results.get('step')}")
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_actions(results: Mapping[str, Any], path: str) -> bool:
    """Per-dimension MAE (robot units) of the inverse-dynamics and policy heads, per embodiment."""
    acts = results.get("action") or {}
    if not acts:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(acts), figsize=(4 * len(acts), 3.2), squeeze=False)
    try:
        for ax, (emb, act) in zip(axes[0], acts.items(), strict=True):
            x = np.arange(len(act["mae"]))
            ax.bar(x - 0.2, act["mae"], 0.4, label="inverse dynamics")
            ax.bar(x + 0.2, act["policy_mae"], 0.4, label="policy (1st action)")
            ax.set_xticks(x, act["dims"], rotation=45, fontsize=7)
            ax.set_ylabel("MAE (robot units)")
            ax.set_title(emb)
            ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


PLOTS: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
    "prediction_l1.png": plot_prediction,
    "action_mae.png": plot_actions,
}
