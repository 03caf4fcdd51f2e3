"""Held-out evaluation of a trained world action model: one function, one table, one JSON file.

    results = evaluate("runs/pusht_small")                        # the training mixture's held-out split
    results = evaluate("runs/pusht_small", data="data/pusht_test") # every episode of other datasets
    print(format_table(results))

Writes `WORKDIR/eval/metrics.json` and PNG plots there. Metrics (overall, per source, per kind
robot / video):

- latent prediction: L1 and cosine between the k-step autoregressive rollout from frame 0 and the
  target latents, per horizon 1..k, next to the copy-last-frame baseline (predicting z_0 for every
  future step); a world model is useful only where it beats the copy;
- action heads (labeled clips, in the robot's own units): per-dimension MAE and R^2 of the inverse
  dynamics head (z_t, z_{t+1}) -> a_t, and MAE of the policy head's first action (goal = last frame);
- action ranking: for each labeled transition, the rank of the true action's energy
  L1(P(z_t, a), z_{t+1}) among K Gaussian perturbations of it (1 = best; chance = (K + 2) / 2), the
  signal a planner relies on;
- representation health: per-dimension std of the target latents, their effective rank (RankMe,
  same definition as the training logs), latent-action spread and FSQ code usage / perplexity.

Conditioning follows training: embedded real actions on labeled steps, inferred latent actions on
action-free ones. Latents are the target encoder's (the space the predictor predicts into), for
inputs and targets alike, as in `WorldModel`.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
METRICS_JSON = "metrics.json"


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class EvalSource:
    """One evaluated dataset and how its batch actions map to the model's units."""

    source_id: int
    name: str
    path: str
    kind: str
    embodiment: str
    embodiment_id: int | None  # in the *training* registry; None: embodiment unseen in training
    action_dim: int
    action_keys: list[str]
    # the eval source's own normalization (how the loader normalized its batch actions)
    action_mean: np.ndarray | None = None
    action_std: np.ndarray | None = None
    is_delta: np.ndarray | None = None
    stride: int = 1
    proprio_mean: np.ndarray | None = None
    proprio_std: np.ndarray | None = None
    proprio_dim: int = 0
    num_windows: int = 0


def _eval_pipeline(config: Any, data: str | None, batch_size: int, max_clips: int | None):
    """(batches iterable, sources): the held-out windows of the training mixture (`data=None`) or
    every window of `data` ('DIR' or 'DIR[:w],DIR'), center crops, in order, padded to full batches."""
    import grain

    from data_pipelines import loader, mixture, transforms

    cfg = copy.deepcopy(config)
    if data is not None:
        cfg.data.mixture = data
        cfg.data.heldout_fraction = 0.0
        split = "train"  # heldout 0: every episode is in the 'train' split; read with center crops
    else:
        split = "eval"
    mix = mixture.load_mixture(cfg)
    parts, sources, total = [], [], 0
    for src in mix.sources:
        index = loader.window_index(src, cfg, split)
        sources.append((src, index))
        n = len(index)
        if max_clips is not None:
            n = min(n, max(0, max_clips - total))
        if n:
            clip = transforms.LoadClip(src, index, image_size=int(cfg.model.image_size),
                                       action_dim=int(cfg.model.action_dim),
                                       proprio_dim=int(cfg.model.proprio_dim))
            parts.append(grain.MapDataset.range(n).map(clip))
            total += n
    if total == 0:
        where = data if data is not None else f"the held-out split of {cfg.data.mixture}"
        raise ValueError(
            f"no evaluation clips of {cfg.data.num_frames} frames in {where} "
            f"(per source: {[i.summary() for _, i in sources]})"
            + ("; raise config.data.heldout_fraction when training, or pass data=DIR" if data is None else ""))
    pad = -total % batch_size
    if pad:
        parts.append(grain.MapDataset.range(pad).map(transforms.PaddingClip(
            num_frames=int(cfg.data.num_frames), image_size=int(cfg.model.image_size),
            action_dim=int(cfg.model.action_dim), proprio_dim=int(cfg.model.proprio_dim),
            dt=sources[0][1].dt)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    return ds.batch(batch_size, drop_remainder=True), sources, total


def _eval_sources(sources, training_embodiments: Sequence[str]) -> list[EvalSource]:
    out = []
    for src, index in sources:
        emb_id = training_embodiments.index(src.embodiment) if src.embodiment in training_embodiments else None
        keys = list(src.action_keys) or [f"a{i}" for i in range(src.action_dim)]
        out.append(EvalSource(
            source_id=src.source_id, name=src.name, path=src.path, kind=src.kind, embodiment=src.embodiment,
            embodiment_id=emb_id, action_dim=src.action_dim, action_keys=keys,
            action_mean=src.stat("action", "mean"), action_std=src.stat("action", "std"),
            is_delta=np.asarray(src.action_is_delta, bool), stride=int(index.stride),
            proprio_mean=src.stat("proprio", "mean"), proprio_std=src.stat("proprio", "std"),
            proprio_dim=src.proprio_dim, num_windows=len(index)))
    return out


# ----------------------------------------------------------------------------------------------
# Host-side unit conversion: eval-source normalization -> robot units -> the model's normalization


def _batch_to_model_units(batch: Mapping[str, np.ndarray], sources: list[EvalSource], wm: Any
                          ) -> dict[str, np.ndarray]:
    """Re-normalizes batch actions/proprio with the *training* statistics of each embodiment.

    Returns model-unit actions, the labeled mask (own dims of embodiments the model knows), robot
    unit target actions, proprio and mask, training embodiment ids.
    """
    from data_pipelines import transforms

    a = np.asarray(batch["action"], np.float32)
    b, s, a_dim = a.shape
    p_dim = batch["proprio"].shape[-1]
    a_model = np.zeros_like(a)
    a_mask = np.zeros(a.shape, bool)
    a_robot = np.zeros_like(a)
    p_model = np.zeros(batch["proprio"].shape, np.float32)
    p_mask = np.zeros(batch["proprio"].shape, bool)
    emb = np.zeros((b,), np.int32)
    tm = np.asarray(batch["timestep_mask"])
    for i in range(b):
        if not tm[i].any():
            continue
        src = sources[int(batch["source_id"][i])]
        if src.embodiment_id is None or src.embodiment not in wm.action_spaces:
            continue
        space = wm.action_space(src.embodiment)
        emb[i] = space.embodiment_id
        d = min(src.action_dim, space.dim)
        mask_i = np.asarray(batch["action_mask"][i])[:, :d]
        if d and src.action_mean is not None and mask_i.any():
            robot = transforms.denormalize_actions(a[i], src.action_mean, src.action_std, src.is_delta, src.stride)
            robot = robot[:, :d]
            norm, _ = space.normalize(np.pad(robot, ((0, 0), (0, space.dim - d))))
            a_model[i, :, :d] = norm[:, :d]
            a_mask[i, :, :d] = mask_i
            a_robot[i, :, :d] = robot
        pd = min(src.proprio_dim, space.proprio_dim)
        pm_i = np.asarray(batch["proprio_mask"][i])[:, :pd]
        if pd and src.proprio_mean is not None and space.proprio_mean is not None and pm_i.any():
            raw = np.asarray(batch["proprio"][i])[:, :pd] * np.maximum(src.proprio_std[:pd], 1e-6) + src.proprio_mean[:pd]
            p_model[i, :, :pd] = transforms.normalize(raw, space.proprio_mean[:pd], space.proprio_std[:pd])
            p_mask[i, :, :pd] = pm_i
    del s, a_dim, p_dim
    return {"action": a_model, "action_mask": a_mask, "action_robot": a_robot, "proprio": p_model,
            "proprio_mask": p_mask, "embodiment_id": emb}


# ----------------------------------------------------------------------------------------------
# The jitted per-batch computation


def _make_step(wm: Any, horizon: int, num_sources: int):
    from flax import nnx

    from wam_jax.models import encoder as encoder_lib
    from wam_jax.models.world_model import encode_latents

    mgraph, tgraph = wm._model_graph, wm._target_graph
    fsq = wm.spec.bottleneck == "fsq"

    def cosine(a, b):
        num = jnp.sum(a * b, axis=-1)
        den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
        return jnp.mean(num / jnp.maximum(den, 1e-8), axis=-1)

    def step(mstate, tstate, video, action, action_mask, proprio, proprio_mask, tm, emb, source_id, noise):
        model = nnx.merge(mgraph, mstate)
        target = nnx.merge(tgraph, tstate)
        zbar = encode_latents(target, encoder_lib.normalize_video(video))  # [B, T, N, D]
        b, t = tm.shape
        step_valid = tm[:, :-1] & tm[:, 1:]
        labeled = jnp.any(action_mask, axis=-1) & step_valid
        la = model.latent_actions(zbar[:, :-1], zbar[:, 1:])
        g = model.action_embedder(action, action_mask, emb)
        unlabeled_cond = model.cond_mask[...] if wm.spec.video_cond == "mask" else la.mean
        cond = jnp.where(labeled[..., None], g, unlabeled_cond)

        # k-step rollout from frame 0 vs targets, and the copy-last-frame baseline.
        k = horizon
        roll = model.rollout_raw(zbar[:, :1], cond[:, :k], proprio[:, :1], proprio_mask[:, :1], k)
        tgt = zbar[:, 1:k + 1]
        copy0 = jnp.broadcast_to(zbar[:, :1], tgt.shape)
        out = {
            "l1": jnp.mean(jnp.abs(roll - tgt), axis=(-2, -1)),
            "cos": cosine(roll, tgt),
            "copy_l1": jnp.mean(jnp.abs(copy0 - tgt), axis=(-2, -1)),
            "copy_cos": cosine(copy0, tgt),
            # The same rollout conditioned on the latent actions inferred from the clip itself: how
            # well the dynamics are known when the conditioning is right, next to how well the real
            # actions convey it (l1). A gap means the action pathway, not the dynamics, limits l1.
            "latent_l1": jnp.mean(jnp.abs(model.rollout_raw(zbar[:, :1], la.mean[:, :k], proprio[:, :1],
                                                            proprio_mask[:, :1], k) - tgt), axis=(-2, -1)),
            "roll_valid": jnp.cumprod(step_valid[:, :k].astype(jnp.int32), axis=1).astype(bool),
            "step_valid": step_valid,
            "labeled": labeled,
        }
        # Action heads (model units; converted to robot units on the host).
        out["a_hat"] = model.inverse_head(zbar[:, :-1], zbar[:, 1:], emb)
        last = jnp.maximum(jnp.sum(tm.astype(jnp.int32), axis=1) - 1, 0)
        z_goal = jnp.take_along_axis(zbar, last[:, None, None, None], axis=1)
        out["policy_hat"] = model.policy_head(zbar[:, :-1], jnp.broadcast_to(z_goal, zbar[:, :-1].shape), emb)[:, :, 0]

        # Action ranking: energy of the true action vs K perturbations, one step from z_t.
        kk = noise.shape[2]
        cands = jnp.concatenate([action[:, :, None], action[:, :, None] + noise], axis=2)  # [B, T-1, K+1, A]
        m = b * (t - 1) * (kk + 1)
        cmask = jnp.broadcast_to(action_mask[:, :, None], cands.shape)
        emb_c = jnp.broadcast_to(emb[:, None, None], cands.shape[:3]).reshape(m)
        gc = model.action_embedder(cands.reshape(m, 1, -1), cmask.reshape(m, 1, -1), emb_c)
        z_in = jnp.broadcast_to(zbar[:, :-1, None], (b, t - 1, kk + 1) + zbar.shape[2:]).reshape((m, 1) + zbar.shape[2:])
        pred = model.predict_raw(z_in, gc, None, None).reshape((b, t - 1, kk + 1) + zbar.shape[2:])
        out["energy"] = jnp.mean(jnp.abs(pred - zbar[:, 1:, None]), axis=(-2, -1))  # [B, T-1, K+1]

        # Representation health: per-source sums for std and the (uncentered) Gram matrix.
        d = zbar.shape[-1]
        w = jnp.broadcast_to(tm[:, :, None], zbar.shape[:3]).astype(jnp.float32)  # [B, T, N]
        onehot = jax.nn.one_hot(source_id, num_sources, dtype=jnp.float32)  # [B, S]
        zf = zbar * w[..., None]
        out["h_count"] = jnp.einsum("btn,bs->s", w, onehot)
        out["h_sum"] = jnp.einsum("btnd,bs->sd", zf, onehot)
        out["h_sum2"] = jnp.einsum("btnd,bs->sd", zf * zbar, onehot)
        out["h_gram"] = jnp.einsum("btnd,btne,bs->sde", zf, zbar, onehot)
        out["u"] = la.mean
        if fsq:
            out["codes"] = la.codes
        del d
        return out

    return jax.jit(step)


# ----------------------------------------------------------------------------------------------
# Accumulation


@dataclass
class _Acc:
    """Sums for one group of examples (a source); merged into kinds and the total."""

    horizon: int
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    pred_n: np.ndarray | None = None
    act: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # embodiment -> sums
    ranks: list[float] = field(default_factory=list)
    num_candidates: int = 0
    h_count: float = 0.0
    h_sum: np.ndarray | None = None
    h_sum2: np.ndarray | None = None
    h_gram: np.ndarray | None = None
    u_sum: np.ndarray | None = None
    u_sum2: np.ndarray | None = None
    u_n: float = 0.0
    codes: collections.Counter = field(default_factory=collections.Counter)
    clips: int = 0

    def add_pred(self, name: str, values: np.ndarray, valid: np.ndarray) -> None:
        s = np.where(valid, values, 0.0).sum(0)
        self.pred[name] = self.pred.get(name, 0.0) + s

    def merge(self, other: _Acc) -> _Acc:
        for k, v in other.pred.items():
            self.pred[k] = self.pred.get(k, 0.0) + v
        if other.pred_n is not None:
            self.pred_n = other.pred_n.copy() if self.pred_n is None else self.pred_n + other.pred_n
        for emb, sums in other.act.items():
            mine = self.act.setdefault(emb, {k: np.zeros_like(v) for k, v in sums.items()})
            for k, v in sums.items():
                mine[k] = mine[k] + v
        self.ranks += other.ranks
        self.num_candidates = max(self.num_candidates, other.num_candidates)
        self.h_count += other.h_count
        for name in ("h_sum", "h_sum2", "h_gram", "u_sum", "u_sum2"):
            a, b = getattr(self, name), getattr(other, name)
            if b is not None:
                setattr(self, name, b.copy() if a is None else a + b)
        self.u_n += other.u_n
        self.codes.update(other.codes)
        self.clips += other.clips
        return self


def _act_sums(dim: int) -> dict[str, np.ndarray]:
    return {k: np.zeros(dim, np.float64) for k in ("n", "abs", "sq", "y", "y2", "pol_abs", "pol_n")}


def _effective_rank(gram: np.ndarray, n: float) -> float:
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram / max(n, 1.0)), 0.0, None))
    p = s / max(s.sum(), 1e-12) + 1e-12
    return float(np.exp(-np.sum(p * np.log(p))))


def _finish(acc: _Acc, *, num_codes: int | None, latent_dim: int, action_keys: Mapping[str, list[str]]
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"num_clips": acc.clips}
    n = acc.pred_n if acc.pred_n is not None else np.zeros(acc.horizon)
    if n.sum() > 0:
        pred = {k: (v / np.maximum(n, 1)).tolist() for k, v in acc.pred.items()}
        pred["l1_vs_copy"] = [a / b if b > 0 else float("nan") for a, b in zip(pred["l1"], pred["copy_l1"], strict=True)]
        pred["latent_l1_vs_copy"] = [a / b if b > 0 else float("nan")
                                     for a, b in zip(pred["latent_l1"], pred["copy_l1"], strict=True)]
        pred["num_steps"] = n.astype(int).tolist()
        out["prediction"] = pred
    actions = {}
    for emb, s in acc.act.items():
        if s["n"].sum() == 0:
            continue
        cnt = np.maximum(s["n"], 1)
        mean_y = s["y"] / cnt
        sst = s["y2"] - cnt * mean_y**2
        r2 = np.where(sst > 1e-12, 1.0 - s["sq"] / np.where(sst > 1e-12, sst, 1.0), np.nan)
        mae = s["abs"] / cnt
        pol = s["pol_abs"] / np.maximum(s["pol_n"], 1)
        actions[emb] = {"dims": action_keys.get(emb, [f"a{i}" for i in range(len(mae))]),
                        "mae": mae.tolist(), "r2": r2.tolist(), "policy_mae": pol.tolist(),
                        "mae_mean": float(mae.mean()), "r2_mean": float(np.nanmean(r2)) if np.any(np.isfinite(r2)) else float("nan"),
                        "policy_mae_mean": float(pol.mean()), "num_transitions": int(s["n"].max())}
    if actions:
        out["action"] = actions
    if acc.ranks:
        r = np.asarray(acc.ranks)
        k = acc.num_candidates
        out["ranking"] = {"num_candidates": k, "mean_rank": float(r.mean()), "top1": float(np.mean(r <= 1.0)),
                          "normalized_rank": float(np.mean((r - 1) / max(k - 1, 1))),
                          "chance_rank": (k + 1) / 2, "num_transitions": int(r.size)}
    if acc.h_count > 0:
        mean = acc.h_sum / acc.h_count
        var = np.maximum(acc.h_sum2 / acc.h_count - mean**2, 0.0)
        health = {"target_std": float(np.mean(np.sqrt(var + 1e-12))),
                  "effective_rank": _effective_rank(acc.h_gram, acc.h_count), "latent_dim": latent_dim,
                  "num_tokens": int(acc.h_count)}
        if acc.u_n > 0:
            um = acc.u_sum / acc.u_n
            health["latent_action_std"] = float(np.mean(np.sqrt(np.maximum(acc.u_sum2 / acc.u_n - um**2, 0) + 1e-12)))
        if num_codes is not None and acc.codes:
            total = sum(acc.codes.values())
            p = np.asarray(list(acc.codes.values()), np.float64) / total
            ent = float(-np.sum(p * np.log(p)))
            health["latent_action_codes_used"] = len(acc.codes)
            health["latent_action_usage"] = len(acc.codes) / min(num_codes, total)
            health["latent_action_perplexity"] = math.exp(ent)
            health["latent_action_num_codes"] = num_codes
        out["health"] = health
    return out


def flat_scalars(results: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The headline numbers of `evaluate`'s results as flat scalars (for metric writers):
    per horizon h `pred_l1/h`, `copy_l1/h`, `l1_vs_copy/h`; per embodiment `act/<emb>/mae|r2`;
    `rank/top1`, `rank/normalized`; `health/*`; the same under `<kind>/` per source kind."""

    def group(r: Mapping[str, Any], pre: str) -> dict[str, float]:
        out: dict[str, float] = {}
        pred = r.get("prediction")
        if pred:
            for h, (l1, c, ratio) in enumerate(zip(pred["l1"], pred["copy_l1"], pred["l1_vs_copy"], strict=True), 1):
                out[f"{pre}pred_l1/{h}"], out[f"{pre}copy_l1/{h}"], out[f"{pre}l1_vs_copy/{h}"] = l1, c, ratio
        for emb, a in r.get("action", {}).items():
            out[f"{pre}act/{emb}/mae"], out[f"{pre}act/{emb}/r2"] = a["mae_mean"], a["r2_mean"]
            out[f"{pre}act/{emb}/policy_mae"] = a["policy_mae_mean"]
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


# ----------------------------------------------------------------------------------------------
# The entry point


def evaluate(workdir: str, *, data: str | None = None, step: int | None = None, max_clips: int | None = None,
             batch_size: int | None = None, num_frames: int | None = None, num_perturbations: int = 16,
             perturb_std: float = 1.0, output_dir: str | None = None, plots: bool = True, seed: int = 0,
             mesh: Any = None) -> dict[str, Any]:
    """Evaluates the checkpoint of `workdir` (latest or `step`); returns (and writes) the metrics.

    Args:
      workdir: a training workdir (`wam-train --workdir`).
      data: converted dataset(s) to evaluate on, 'DIR' or 'DIR[:w],DIR' (every episode); default:
        the held-out split of the training mixture.
      step: checkpoint step (default: latest).
      max_clips: evaluate at most this many clips (default: all).
      batch_size: clips per device batch (default: the training global batch size).
      num_frames: clip length T (horizons 1..T-1); default: the training `config.data.num_frames`.
      num_perturbations: K perturbed actions per labeled transition for the ranking metric.
      perturb_std: std of the perturbations, in units of the dataset action std.
      output_dir: where metrics.json and plots go (default: WORKDIR/eval).
      plots: write PNG plots (matplotlib).
      seed: seed of the perturbations.
      mesh: device mesh for the model (default: all devices, see `WorldModel.load`).
    """
    from wam_jax.inference.world_model_api import WorldModel

    t0 = time.perf_counter()
    wm = WorldModel.load(workdir, step, mesh=mesh)
    if not wm.has_predictor:
        raise ValueError(f"{workdir}: evaluation needs the predictor (an encoder-only export cannot be evaluated)")
    config = copy.deepcopy(wm.config)
    if num_frames is not None:
        if int(num_frames) < 2:
            raise ValueError(f"num_frames={num_frames}: need at least 2 frames per clip")
        config.data.num_frames = int(num_frames)
    bsz = int(batch_size or config.data.global_batch_size)
    batches, raw_sources, total = _eval_pipeline(config, data, bsz, max_clips)
    sources = _eval_sources(raw_sources, list(wm.info.get("embodiments", [])))
    t = int(config.data.num_frames)
    horizon = t - 1
    num_sources = len(sources)
    step_fn = _make_step(wm, horizon, num_sources)
    num_codes = wm._model().latent_actions.num_codes if wm.spec.bottleneck == "fsq" else None
    accs = [_Acc(horizon) for _ in sources]
    rng = np.random.default_rng(seed)
    action_keys = {}
    for s in sources:
        if s.embodiment in wm.action_spaces:
            action_keys.setdefault(s.embodiment, s.action_keys[: wm.action_spaces[s.embodiment].dim])

    n_batches = 0
    for batch in batches:
        conv = _batch_to_model_units(batch, sources, wm)
        noise = rng.normal(0.0, perturb_std, size=conv["action"].shape[:2] + (num_perturbations, conv["action"].shape[-1]))
        noise = (noise * conv["action_mask"][:, :, None]).astype(np.float32)
        with jax.set_mesh(wm.mesh):
            out = step_fn(wm._model_state, wm._target_state, jnp.asarray(batch["video"]), jnp.asarray(conv["action"]),
                          jnp.asarray(conv["action_mask"]), jnp.asarray(conv["proprio"]),
                          jnp.asarray(conv["proprio_mask"]), jnp.asarray(batch["timestep_mask"]),
                          jnp.asarray(conv["embodiment_id"]), jnp.asarray(batch["source_id"], jnp.int32),
                          jnp.asarray(noise))
        out = jax.device_get(out)
        _accumulate(accs, sources, batch, conv, out, wm, num_perturbations)
        n_batches += 1

    # Groups: per source, per kind, overall.
    def finish(acc: _Acc) -> dict[str, Any]:
        return _finish(acc, num_codes=num_codes, latent_dim=wm.latent_shape[1], action_keys=action_keys)

    per_source = {}
    kinds: dict[str, _Acc] = {}
    overall = _Acc(horizon)
    for s, acc in zip(sources, accs, strict=True):
        per_source[s.name] = {"kind": s.kind, "embodiment": s.embodiment, "path": s.path, **finish(acc)}
        kinds.setdefault(s.kind, _Acc(horizon)).merge(acc)
        overall.merge(acc)
    results: dict[str, Any] = {
        "workdir": os.path.abspath(workdir), "step": wm.step,
        "data": data or f"held-out split of {wm.config.data.mixture}",
        "num_frames": t, "horizon": horizon, "num_clips": total, "num_batches": n_batches,
        "num_perturbations": num_perturbations, "perturb_std": perturb_std,
        **finish(overall),
        "per_kind": {k: finish(a) for k, a in sorted(kinds.items())},
        "per_source": per_source,
    }
    out_dir = os.path.abspath(output_dir or os.path.join(workdir, EVAL_DIR))
    os.makedirs(out_dir, exist_ok=True)
    if plots:
        results["plots"] = write_plots(results, out_dir)
    results["seconds"] = time.perf_counter() - t0
    path = os.path.join(out_dir, METRICS_JSON)
    with open(path + ".tmp", "w") as f:
        json.dump(_json_safe(results), f, indent=2)
    os.replace(path + ".tmp", path)
    results["metrics_path"] = path
    log.info("evaluated %d clips of %s (step %s) in %.1fs -> %s", total, workdir, wm.step, results["seconds"], path)
    return results


def _accumulate(accs: list[_Acc], sources: list[EvalSource], batch: Mapping[str, np.ndarray],
                conv: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], wm: Any, kk: int) -> None:
    tm = np.asarray(batch["timestep_mask"])
    sid = np.asarray(batch["source_id"])
    for s, acc in enumerate(accs):
        acc.h_count += float(out["h_count"][s])
        for name in ("h_sum", "h_sum2", "h_gram"):
            v = np.asarray(out[name][s], np.float64)
            cur = getattr(acc, name)
            setattr(acc, name, v if cur is None else cur + v)
    for i in range(tm.shape[0]):
        if not tm[i].any():
            continue
        src = sources[int(sid[i])]
        acc = accs[int(sid[i])]
        acc.clips += 1
        rv = out["roll_valid"][i]
        for name in ("l1", "cos", "copy_l1", "copy_cos", "latent_l1"):
            acc.add_pred(name, out[name][i][None], rv[None])
        acc.pred_n = rv.astype(np.float64) if acc.pred_n is None else acc.pred_n + rv
        sv = out["step_valid"][i]
        u = np.asarray(out["u"][i], np.float64)[sv]
        if u.size:
            acc.u_sum = u.sum(0) if acc.u_sum is None else acc.u_sum + u.sum(0)
            acc.u_sum2 = (u**2).sum(0) if acc.u_sum2 is None else acc.u_sum2 + (u**2).sum(0)
            acc.u_n += u.shape[0]
        if "codes" in out:
            acc.codes.update(tuple(int(c) for c in code) for code in np.asarray(out["codes"][i])[sv])
        lab = out["labeled"][i]
        if not lab.any() or src.embodiment not in wm.action_spaces:
            continue
        space = wm.action_space(src.embodiment)
        d = space.dim
        mask = conv["action_mask"][i][:, :d] & sv[:, None]
        y = conv["action_robot"][i][:, :d]
        yhat = space.denormalize(out["a_hat"][i])
        phat = space.denormalize(out["policy_hat"][i])
        sums = acc.act.setdefault(src.embodiment, _act_sums(d))
        sums["n"] += mask.sum(0)
        sums["abs"] += np.where(mask, np.abs(yhat - y), 0).sum(0)
        sums["sq"] += np.where(mask, (yhat - y) ** 2, 0).sum(0)
        sums["y"] += np.where(mask, y, 0).sum(0)
        sums["y2"] += np.where(mask, y**2, 0).sum(0)
        sums["pol_abs"] += np.where(mask, np.abs(phat - y), 0).sum(0)
        sums["pol_n"] += mask.sum(0)
        e = np.asarray(out["energy"][i])  # [T-1, K+1]
        for tt in np.nonzero(lab & sv)[0]:
            true, pert = e[tt, 0], e[tt, 1:]
            acc.ranks.append(1.0 + float(np.sum(pert < true)) + 0.5 * float(np.sum(pert == true)))
        acc.num_candidates = kk + 1


def _json_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


# ----------------------------------------------------------------------------------------------
# Presentation


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
                           ("  model / copy L1, latent-action cond.", "latent_l1_vs_copy")):
            lines.append(f"{label:<43s}" + "".join(f"{_fmt(v):>8s}" for v in pred[key]))
    for emb, act in (results.get("action") or {}).items():
        lines += ["", f"Action heads, embodiment {emb!r} ({act['num_transitions']} labeled transitions, robot units)",
                  f"  {'dim':<12s}{'IDM MAE':>10s}{'IDM R^2':>10s}{'policy MAE':>12s}"]
        for name, mae, r2, pm in zip(act["dims"], act["mae"], act["r2"], act["policy_mae"], strict=False):
            lines.append(f"  {name:<12s}{_fmt(mae, 4):>10s}{_fmt(r2):>10s}{_fmt(pm, 4):>12s}")
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
    """PNG plots next to metrics.json: prediction error per horizon, action error per dim, ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    pred = results.get("prediction")
    if pred:
        fig, ax = plt.subplots(figsize=(5, 3.5))
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
        paths.append(os.path.join(out_dir, "prediction_l1.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    acts = results.get("action") or {}
    if acts:
        fig, axes = plt.subplots(1, len(acts), figsize=(4 * len(acts), 3.2), squeeze=False)
        for ax, (emb, act) in zip(axes[0], acts.items(), strict=True):
            x = np.arange(len(act["mae"]))
            ax.bar(x - 0.2, act["mae"], 0.4, label="inverse dynamics")
            ax.bar(x + 0.2, act["policy_mae"], 0.4, label="policy (1st action)")
            ax.set_xticks(x, act["dims"], rotation=45, fontsize=7)
            ax.set_ylabel("MAE (robot units)")
            ax.set_title(emb)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "action_mae.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
