"""Held-out evaluation of a trained world action model: one data path, one compiled step, one JSON file.

    results = evaluate("runs/pusht_small")                        # the training mixture's held-out split
    results = evaluate("runs/pusht_small", data="data/pusht_test") # every episode of other datasets
    print(eval_report.format_table(results))

    evaluator = Evaluator(config, info)                            # in training: the in-memory model
    results = evaluator(model, target_encoder)

Writes `WORKDIR/eval/metrics.json` first, then PNG plots (`eval_report`; a plot that fails is a
warning). Metrics (overall, per source, per kind robot / video):

- latent prediction: L1 and cosine between the k-step autoregressive rollout from frame 0 and the
  target latents, per horizon 1..k, next to the copy-last-frame baseline (predicting z_0 for every
  future step); a world model is useful only where it beats the copy. `shuffled_l1`: the same
  rollout under another clip's actions (`shuffled_vs_true` > 1 when the actions are used);
- action heads (labeled clips, in the robot's own units): per-dimension MAE and R^2 of the inverse
  dynamics head (z_t, z_{t+1}) -> a_t, and MAE of the policy head's first action (goal = last frame;
  the flow head's too, one draw, where the model has one);
- action ranking: for each labeled transition, the rank of the true action's energy
  L1(P(z_t, a), z_{t+1}) among K Gaussian perturbations of it (1 = best; chance = (K + 2) / 2), the
  signal a planner relies on;
- representation health: per-dimension std of the target latents, their effective rank (the
  training logs' definition), latent-action spread and FSQ code usage / perplexity.

Data: the loader's eval stream (`loader.make_dataset(split='eval')`), normalized with the statistics
the model was trained with for each clip's embodiment; robot units are one affine map per source.
Conditioning follows training (`WorldActionModel.conditioning`). Latents are the target encoder's
(the space the predictor predicts into), for inputs and targets alike, as in `WorldModel`. The
jitted step reduces every batch to per-source sums on device, so the host only adds small arrays.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import paths
from data_pipelines.mixture import indexed_names
from wam_jax.inference import eval_report
from wam_jax.inference.action_space import action_spaces_from_info

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
METRICS_JSON = "metrics.json"
PRED_KEYS = ("l1", "cos", "copy_l1", "copy_cos", "latent_l1", "shuffled_l1")
ACT_KEYS = ("n", "abs", "sq", "y", "y2", "pol_abs")


# ----------------------------------------------------------------------------------------------
# The jitted per-batch computation: per-source sums


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    num = jnp.sum(a * b, axis=-1)
    den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.mean(num / jnp.maximum(den, 1e-8), axis=-1)


def _batch_sums(model: Any, target: Any, batch: Mapping[str, jax.Array], offset: jax.Array, scale: jax.Array,
                noise: jax.Array, other_action: jax.Array, other_mask: jax.Array, num_sources: int
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One batch -> (per-source sums `[S, ...]`, the latent-action codes of its transitions).

    offset / scale `[S, A]`: robot units = normalized * scale + offset, per source; other_action /
    other_mask: another clip's actions for each clip (the shuffled-action rollout)."""
    tm, action, a_mask = batch["timestep_mask"], batch["action"], batch["action_mask"]
    proprio, p_mask, emb = batch["proprio"], batch["proprio_mask"], batch["embodiment_id"]
    zbar = model.encode(batch["video"], encoder=target)  # [B, T, N, D]
    b, t = tm.shape
    k = t - 1
    step_valid = tm[:, :-1] & tm[:, 1:]
    labeled = jnp.any(a_mask, axis=-1) & step_valid
    conditioning = model.conditioning(zbar, action, a_mask, emb, labeled)
    cond, la = conditioning.cond, conditioning.latent  # deterministic latent actions: u == mean
    onehot = jax.nn.one_hot(batch["source_id"], num_sources, dtype=jnp.float32)  # [B, S]

    def per_source(x: jax.Array, valid: jax.Array) -> jax.Array:  # [B, J, ...] masked by [B, J]
        x = jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim)), x, 0.0)
        return jnp.einsum("bj...,bs->sj...", x.astype(jnp.float32), onehot)

    # k-step rollout from frame 0 vs targets, and the copy-last-frame baseline. The same rollout
    # conditioned on the latent actions inferred from the clip itself (latent_l1): how well the
    # dynamics are known when the conditioning is right; a gap to l1 means the action pathway limits.
    roll = model.rollout_raw(zbar[:, :1], cond[:, :k], proprio[:, :1], p_mask[:, :1], k)
    roll_u = model.rollout_raw(zbar[:, :1], la.mean[:, :k], proprio[:, :1], p_mask[:, :1], k)
    # Another clip's actions on the labeled steps (rolled by the host: a roll over the sharded batch
    # is a collective): the error must rise if the predictor uses the actions at all.
    g_other = model.action_embedder(other_action, other_mask, emb)
    cond_other = jnp.where(labeled[..., None], g_other, cond)
    roll_s = model.rollout_raw(zbar[:, :1], cond_other[:, :k], proprio[:, :1], p_mask[:, :1], k)
    tgt = zbar[:, 1:k + 1]
    copy0 = jnp.broadcast_to(zbar[:, :1], tgt.shape)
    rv = jnp.cumprod(step_valid[:, :k].astype(jnp.int32), axis=1).astype(bool)
    pred = {"l1": jnp.mean(jnp.abs(roll - tgt), axis=(-2, -1)), "cos": _cosine(roll, tgt),
            "copy_l1": jnp.mean(jnp.abs(copy0 - tgt), axis=(-2, -1)), "copy_cos": _cosine(copy0, tgt),
            "latent_l1": jnp.mean(jnp.abs(roll_u - tgt), axis=(-2, -1)),
            "shuffled_l1": jnp.mean(jnp.abs(roll_s - tgt), axis=(-2, -1))}
    out = {f"pred/{name}": per_source(v, rv) for name, v in pred.items()}  # [S, k]
    out["pred_n"] = per_source(jnp.ones(rv.shape), rv)
    out["clips"] = jnp.einsum("b,bs->s", jnp.any(tm, axis=1).astype(jnp.float32), onehot)

    # Action heads, in robot units: one affine map per source (the statistics it was fed with).
    last = jnp.maximum(jnp.sum(tm.astype(jnp.int32), axis=1) - 1, 0)
    z_goal = jnp.take_along_axis(zbar, last[:, None, None, None], axis=1)
    a_hat = model.inverse_head(zbar[:, :-1], zbar[:, 1:], emb)
    p_hat = model.policy_head(zbar[:, :-1], jnp.broadcast_to(z_goal, zbar[:, :-1].shape), emb)[:, :, 0]
    off, sc = (offset[batch["source_id"]][:, None], scale[batch["source_id"]][:, None])  # [B, 1, A]
    y, y_hat, pol = action * sc + off, a_hat * sc + off, p_hat * sc + off
    m = a_mask & step_valid[..., None]
    act = {"n": jnp.ones_like(y), "abs": jnp.abs(y_hat - y), "sq": jnp.square(y_hat - y), "y": y,
           "y2": jnp.square(y), "pol_abs": jnp.abs(pol - y)}
    if model.flow_head is not None:  # one draw of the flow head (a fixed key), its first action
        from wam_jax.models.vag import flow_policy

        f_hat = flow_policy(model, zbar[:, :-1], z_goal[:, 0], jax.random.key(0), proprio[:, :-1] * p_mask[:, :-1], emb)
        act["flow_abs"] = jnp.abs(f_hat[:, :, 0] * sc + off - y)
    for name, v in act.items():
        out[f"act/{name}"] = jnp.sum(per_source(v, m), axis=1)  # [S, A]

    # Action ranking: energy of the true action vs K perturbations, one step from z_t.
    kk = noise.shape[2]
    cands = jnp.concatenate([action[:, :, None], action[:, :, None] + noise], axis=2)  # [B, T-1, K+1, A]
    mm = b * (t - 1) * (kk + 1)
    cmask = jnp.broadcast_to(a_mask[:, :, None], cands.shape)
    emb_c = jnp.broadcast_to(emb[:, None, None], cands.shape[:3]).reshape(mm)
    gc = model.action_embedder(cands.reshape(mm, 1, -1), cmask.reshape(mm, 1, -1), emb_c)
    z_in = jnp.broadcast_to(zbar[:, :-1, None], (b, t - 1, kk + 1) + zbar.shape[2:]).reshape((mm, 1) + zbar.shape[2:])
    pred_c = model.predict_raw(z_in, gc, None, None).reshape((b, t - 1, kk + 1) + zbar.shape[2:])
    energy = jnp.mean(jnp.abs(pred_c - zbar[:, 1:, None]), axis=(-2, -1))  # [B, T-1, K+1]
    true, pert = energy[..., :1], energy[..., 1:]
    rank = 1.0 + jnp.sum(pert < true, axis=-1) + 0.5 * jnp.sum(pert == true, axis=-1)  # [B, T-1]
    out["rank_sum"] = jnp.sum(per_source(rank, labeled), axis=1)
    out["rank_top1"] = jnp.sum(per_source((rank <= 1.0).astype(jnp.float32), labeled), axis=1)
    out["rank_n"] = jnp.sum(per_source(jnp.ones(rank.shape), labeled), axis=1)

    # Representation health: sums for the std and the (uncentered) Gram matrix of the targets.
    w = jnp.broadcast_to(tm[:, :, None], zbar.shape[:3]).astype(jnp.float32)  # [B, T, N]
    zf = zbar * w[..., None]
    out["h_count"] = jnp.einsum("btn,bs->s", w, onehot)
    out["h_sum"] = jnp.einsum("btnd,bs->sd", zf, onehot)
    out["h_sum2"] = jnp.einsum("btnd,bs->sd", zf * zbar, onehot)
    out["h_gram"] = jnp.einsum("btnd,btne,bs->sde", zf, zbar, onehot)
    out["u_sum"] = jnp.sum(per_source(la.mean, step_valid), axis=1)
    out["u_sum2"] = jnp.sum(per_source(jnp.square(la.mean), step_valid), axis=1)
    out["u_n"] = jnp.sum(per_source(jnp.ones(step_valid.shape), step_valid), axis=1)
    codes = {"codes": la.codes, "valid": step_valid, "source_id": batch["source_id"]}
    return out, codes


def _step(mgraph: Any, tgraph: Any, mstate: Any, tstate: Any, batch: Mapping[str, jax.Array], offset: jax.Array,
          scale: jax.Array, noise: jax.Array, other_action: jax.Array, other_mask: jax.Array, *,
          num_sources: int, codes: bool):
    from flax import nnx

    sums, code_out = _batch_sums(nnx.merge(mgraph, mstate), nnx.merge(tgraph, tstate), batch, offset, scale,
                                 noise, other_action, other_mask, num_sources)
    return sums, (code_out if codes else {})


# ----------------------------------------------------------------------------------------------
# The evaluator


BATCH_KEYS = ("video", "action", "action_mask", "proprio", "proprio_mask", "timestep_mask", "embodiment_id",
              "source_id")


def _mesh_of(tree: Any) -> Any:
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return sharding.mesh
    raise ValueError("the model's arrays carry no NamedSharding: pass mesh=")


class Evaluator:
    """Held-out metrics of in-memory models (training's periodic eval, `evaluate`): the clips, their
    normalization and the jitted step are set up once; each call evaluates the given modules.

    Args:
      config: the training config (mixture, model dims, clip length, batch size).
      info: `loader.mixture_info` of the data the model was trained on (a checkpoint's `stats`):
        the statistics clips are normalized with, the embodiment ids, the action dims' names.
      data, max_clips, batch_size, num_frames, num_perturbations, perturb_std, seed: see `evaluate`.
      mesh: default: the mesh the model's arrays live on.
    """

    def __init__(self, config: Any, info: Mapping[str, Any], *, data: str | None = None,
                 max_clips: int | None = None, batch_size: int | None = None, num_frames: int | None = None,
                 num_perturbations: int = 16, perturb_std: float = 1.0, seed: int = 0, mesh: Any = None):
        from data_pipelines import loader

        cfg = copy.deepcopy(config)
        if num_frames is not None:
            if int(num_frames) < 2:
                raise ValueError(f"num_frames={num_frames}: need at least 2 frames per clip")
            cfg.data.num_frames = int(num_frames)
        cfg.data.global_batch_size = int(batch_size or cfg.data.global_batch_size)
        cfg.data.num_workers = 0  # reader threads decode; no worker processes to start per evaluation
        self.config, self.info, self.data, self.mesh = cfg, dict(info), data, mesh
        self.num_perturbations, self.perturb_std, self.seed = int(num_perturbations), float(perturb_std), seed
        self.sources = loader.eval_sources(cfg, data=data, trained=info, max_clips=max_clips)
        self.dataset = loader.make_dataset(cfg, split="eval", process_index=jax.process_index(),
                                           process_count=jax.process_count(), data=data, max_clips=max_clips,
                                           trained=info)
        a = int(cfg.model.action_dim)
        self._offset = np.zeros((len(self.sources), a), np.float32)
        self._scale = np.ones((len(self.sources), a), np.float32)
        for i, e in enumerate(self.sources):
            offset, scale = e.norm.action_affine()
            d = min(len(offset), a)
            self._offset[i, :d], self._scale[i, :d] = offset[:d], scale[:d]
        self._fns: dict[Any, Any] = {}

    @property
    def num_clips(self) -> int:
        return sum(e.num_clips for e in self.sources)

    def _report(self, done: int, t0: float) -> None:
        """`wam-eval`'s progress line, about every tenth of the batches (the first one compiles)."""
        total = -(-self.num_clips // int(self.config.data.global_batch_size))
        if jax.process_index() == 0 and (done == 1 or done == total or done % max(1, total // 10) == 0):
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * max(total - done, 0)
            print(f"[eval] batch {done}/{total} ({elapsed:.0f}s, ETA {eta:.0f}s)", flush=True)

    def _fn(self, mesh: Any, codes: bool) -> Any:
        """The jitted step, one per (mesh, codes); model structures are static arguments."""
        import functools

        from wam_jax import sharding

        key = (mesh, codes)
        if key not in self._fns:
            self._fns[key] = jax.jit(
                functools.partial(_step, num_sources=len(self.sources), codes=codes),
                static_argnums=(0, 1), out_shardings=sharding.replicated(mesh))
        return self._fns[key]

    def _place(self, x: np.ndarray, mesh: Any) -> jax.Array:
        """This process's rows -> one global array, split over the data-parallel devices."""
        from wam_jax import sharding

        x = np.asarray(x)
        global_batch = int(self.config.data.global_batch_size)
        if global_batch % sharding.data_parallel_size(mesh) == 0:
            target = sharding.batch_sharding(mesh, x.ndim)
        elif jax.process_count() == 1:
            target = sharding.replicated(mesh)
        else:
            raise ValueError(f"eval batch size {global_batch} is not divisible by the data-parallel size "
                             f"{sharding.data_parallel_size(mesh)}")
        return jax.make_array_from_process_local_data(target, x, (global_batch, *x.shape[1:]))

    def __call__(self, model: Any, target: Any, *, progress: bool = False) -> dict[str, Any]:
        """Metrics of `model` (a `WorldActionModel`) with `target` (its target encoder) on the clips."""
        from flax import nnx

        from wam_jax import sharding

        t0 = time.perf_counter()
        mgraph, mstate = nnx.split(model)
        tgraph, tstate = nnx.split(target)
        mesh = self.mesh if self.mesh is not None else _mesh_of(mstate)
        num_codes = int(getattr(model.latent_actions, "num_codes", 0) or 0)
        fn = self._fn(mesh, num_codes > 0)
        # the same perturbations at every call, so periodic evaluations compare like with like
        rng = np.random.default_rng(self.seed if jax.process_count() == 1 else (self.seed, jax.process_index()))
        sums: dict[str, np.ndarray] = {}
        codes: list[dict[str, np.ndarray]] = []
        pending, n_batches = None, 0

        def collect(item) -> None:  # fetched one batch late: the host never waits on the step in flight
            out, code_out = jax.device_get(item)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
            if code_out:
                codes.append(code_out)

        with jax.set_mesh(mesh):
            offset = jax.device_put(self._offset, sharding.replicated(mesh))
            scale = jax.device_put(self._scale, sharding.replicated(mesh))
            for batch in self.dataset:
                a_mask = np.asarray(batch["action_mask"])
                noise = rng.normal(0.0, self.perturb_std, size=a_mask.shape[:2] + (self.num_perturbations,)
                                   + a_mask.shape[2:])
                noise = (noise * a_mask[:, :, None]).astype(np.float32)
                placed = {k: self._place(batch[k], mesh) for k in BATCH_KEYS}
                others = [self._place(np.roll(np.asarray(batch[k]), 1, axis=0), mesh) for k in ("action", "action_mask")]
                out = fn(mgraph, tgraph, mstate, tstate, placed, offset, scale, self._place(noise, mesh), *others)
                if pending is not None:
                    collect(pending)
                pending, n_batches = out, n_batches + 1
                if progress:
                    self._report(n_batches, t0)
            if pending is not None:
                collect(pending)
        t = int(self.config.data.num_frames)
        results = {
            "data": self.data or f"held-out split of {self.config.data.mixture}",
            "num_frames": t, "horizon": t - 1, "num_clips": self.num_clips, "num_batches": n_batches,
            "num_perturbations": self.num_perturbations, "perturb_std": self.perturb_std,
        }
        results.update(self._groups(sums, codes, num_codes))
        results["eval_seconds"] = time.perf_counter() - t0
        return results

    # -- sums -> metrics ------------------------------------------------------------------------

    def _groups(self, sums: Mapping[str, np.ndarray], codes: list[dict[str, np.ndarray]], num_codes: int
                ) -> dict[str, Any]:
        """Overall, per kind and per source metrics from the per-source sums."""
        if codes:
            valid = np.concatenate([c["valid"].reshape(-1) for c in codes])
            sid = np.concatenate([np.repeat(c["source_id"], c["valid"].shape[1]) for c in codes])[valid]
            flat = np.concatenate([c["codes"].reshape(-1, c["codes"].shape[-1]) for c in codes])[valid]
        else:
            sid, flat = np.zeros((0,), np.int64), None

        def finish(rows: list[int]) -> dict[str, Any]:
            group_codes = None if flat is None else flat[np.isin(sid, rows)]
            return self._finish(sums, rows, group_codes, num_codes)

        kinds = sorted({e.source.kind for e in self.sources})
        return {
            **finish(list(range(len(self.sources)))),
            "per_kind": {k: finish([i for i, e in enumerate(self.sources) if e.source.kind == k]) for k in kinds},
            "per_source": {e.source.name: {"kind": e.source.kind, "embodiment": e.source.embodiment,
                                           "path": e.source.path, **finish([i])}
                           for i, e in enumerate(self.sources)},
        }

    def _finish(self, sums: Mapping[str, np.ndarray], rows: list[int], codes: np.ndarray | None,
                num_codes: int) -> dict[str, Any]:
        def total(key: str) -> np.ndarray:
            return np.asarray(sums[key])[rows].sum(0)

        out: dict[str, Any] = {"num_clips": int(total("clips")) if sums else 0}
        if not sums:
            return out
        n = total("pred_n")
        if n.sum() > 0:
            pred = {k: (total(f"pred/{k}") / np.maximum(n, 1)).tolist() for k in PRED_KEYS}
            for name, num, den in (("l1_vs_copy", "l1", "copy_l1"), ("latent_l1_vs_copy", "latent_l1", "copy_l1"),
                                   ("shuffled_vs_true", "shuffled_l1", "l1")):
                pred[name] = [a / b if b > 0 else float("nan") for a, b in zip(pred[num], pred[den], strict=True)]
            pred["num_steps"] = n.astype(int).tolist()
            out["prediction"] = pred
        actions = {}
        spaces = action_spaces_from_info(self.info, int(self.config.model.action_dim), "evaluation")
        for emb in dict.fromkeys(self.sources[i].source.embodiment for i in rows):
            same = [i for i in rows if self.sources[i].source.embodiment == emb]
            s = {k: np.asarray(sums[f"act/{k}"])[same].sum(0) for k in (*ACT_KEYS, "flow_abs") if f"act/{k}" in sums}
            if s["n"].sum() == 0:
                continue
            dim = max(len(e.norm.action_mean) * e.norm.chunk for e in (self.sources[i] for i in same)
                      if e.norm.has_actions)
            space = spaces.get(emb)
            names = list(space.action_names[:dim]) if space else list(indexed_names("action", dim))
            actions[emb] = _action_metrics({k: v[:dim] for k, v in s.items()}, names)
        if actions:
            out["action"] = actions
        rank_n = float(total("rank_n"))
        if rank_n > 0:
            k = self.num_perturbations + 1
            rank_sum = float(total("rank_sum"))
            out["ranking"] = {"num_candidates": k, "mean_rank": rank_sum / rank_n,
                              "top1": float(total("rank_top1")) / rank_n,
                              "normalized_rank": (rank_sum - rank_n) / max(k - 1, 1) / rank_n,
                              "chance_rank": (k + 1) / 2, "num_transitions": int(rank_n)}
        count = float(total("h_count"))
        if count > 0:
            out["health"] = _health(total, count, codes, num_codes)
        return out


def _action_metrics(s: Mapping[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    cnt = np.maximum(s["n"], 1)
    mean_y = s["y"] / cnt
    sst = s["y2"] - cnt * mean_y**2
    r2 = np.where(sst > 1e-12, 1.0 - s["sq"] / np.where(sst > 1e-12, sst, 1.0), np.nan)
    mae = s["abs"] / cnt
    pol = s["pol_abs"] / cnt
    flow = {"flow_mae": (s["flow_abs"] / cnt).tolist(), "flow_mae_mean": float((s["flow_abs"] / cnt).mean())
            } if "flow_abs" in s else {}
    return {"dims": names, "mae": mae.tolist(), "r2": r2.tolist(), "policy_mae": pol.tolist(),
            "mae_mean": float(mae.mean()),
            "r2_mean": float(np.nanmean(r2)) if np.any(np.isfinite(r2)) else float("nan"),
            "policy_mae_mean": float(pol.mean()), "num_transitions": int(s["n"].max()), **flow}


def _health(total: Callable[[str], np.ndarray], count: float, codes: np.ndarray | None, num_codes: int
            ) -> dict[str, Any]:
    from wam_jax.training import health as health_metrics

    mean = total("h_sum") / count
    var = np.maximum(total("h_sum2") / count - mean**2, 0.0)
    gram = total("h_gram")
    health: dict[str, Any] = {"target_std": float(np.mean(np.sqrt(var + 1e-12))),
                              "effective_rank": float(health_metrics.effective_rank(gram, count)),
                              "latent_dim": int(gram.shape[-1]), "num_tokens": int(count)}
    u_n = float(total("u_n"))
    if u_n > 0:
        um = total("u_sum") / u_n
        health["latent_action_std"] = float(np.mean(np.sqrt(np.maximum(total("u_sum2") / u_n - um**2, 0) + 1e-12)))
    if num_codes and codes is not None and len(codes):
        counts = np.unique(codes, axis=0, return_counts=True)[1]
        p = counts / counts.sum()
        health["latent_action_codes_used"] = int(len(counts))
        health["latent_action_usage"] = len(counts) / min(num_codes, int(counts.sum()))
        health["latent_action_perplexity"] = math.exp(float(-np.sum(p * np.log(p))))
        health["latent_action_num_codes"] = num_codes
    return health


# ----------------------------------------------------------------------------------------------
# Entry points


def write_metrics(results: Mapping[str, Any], out_dir: str, name: str = METRICS_JSON) -> str:
    """`out_dir/metrics.json` (or `name`), atomically (written before any plot: results first)."""
    from etils import epath

    path = epath.Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, json.dumps(_json_safe(results), indent=2))
    return str(path)


def evaluate(workdir: str, *, data: str | None = None, step: int | None = None, max_clips: int | None = None,
             batch_size: int | None = None, num_frames: int | None = None, num_perturbations: int = 16,
             perturb_std: float = 1.0, output_dir: str | None = None, plots: bool = True, seed: int = 0,
             mesh: Any = None, progress: bool = False, restored: Any = None) -> dict[str, Any]:
    """Evaluates the checkpoint of `workdir` (latest or `step`); returns (and writes) the metrics.

    Args:
      workdir: a training workdir (`wam-train --workdir`) or a `wam-export --with_predictor` directory.
      data: converted dataset(s) to evaluate on, 'DIR' or 'DIR[:w],DIR' (every episode); default:
        the held-out split of the training mixture.
      step: checkpoint step (default: latest).
      max_clips: evaluate at most this many clips (default: all).
      batch_size: clips per batch (default: the training global batch size).
      num_frames: clip length T (horizons 1..T-1); default: the training `config.data.num_frames`.
      num_perturbations: K perturbed actions per labeled transition for the ranking metric.
      perturb_std: std of the perturbations, in units of the dataset action std.
      output_dir: where metrics.json and plots go (default: WORKDIR/eval).
      plots: write PNG plots after metrics.json (a plot that fails is a logged warning).
      seed: seed of the perturbations.
      mesh: device mesh for the model (default: all devices, see `WorldModel.load`).
      progress: print a progress line about every tenth of the batches (`wam-eval`).
      restored: the model already restored from `workdir` (`load.restore`), instead of reading it
        again (then `step` and `mesh` are the restore's).
    """
    from wam_jax.inference import load

    t0 = time.perf_counter()
    restored = restored if restored is not None else load.restore(workdir, step, mesh=mesh)
    if restored.model is None:
        raise ValueError(f"{workdir}: evaluation needs the predictor (an encoder-only export cannot be evaluated)")
    evaluator = Evaluator(restored.config, restored.info, data=data, max_clips=max_clips, batch_size=batch_size,
                          num_frames=num_frames, num_perturbations=num_perturbations, perturb_std=perturb_std,
                          seed=seed, mesh=restored.mesh)
    results = {"workdir": paths.absolute(workdir), "step": restored.step,
               **evaluator(restored.model, restored.target, progress=progress)}
    results["seconds"] = time.perf_counter() - t0
    out_dir = paths.absolute(output_dir or os.path.join(workdir, EVAL_DIR))
    if jax.process_index() == 0:
        results["metrics_path"] = write_metrics(results, out_dir)
        log.info("evaluated %d clips of %s (step %s) in %.1fs -> %s", results["num_clips"], workdir,
                 restored.step, results["seconds"], results["metrics_path"])
        if plots:
            results["plots"] = eval_report.write_plots(results, out_dir)
    return results


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
