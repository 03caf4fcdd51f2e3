"""The one loss function of the world action model, and the health metrics logged with it.

    loss = λ_ssl L_ssl + λ_tf L_tf + λ_roll L_roll + λ_align L_align + λ_align_u L_align_u + λ_bottleneck L_bn
         + λ_act L_act + λ_act_pred L_act_pred + λ_policy L_policy + λ_flow L_flow + λ_recon L_recon
         + λ_privileged L_privileged + anti-collapse

Every term is a masked mean with a `max(count, 1)` denominator and `jnp.where` masking, so a term
whose mask is empty contributes exactly zero (and exactly zero gradient: a batch of action-free
clips leaves the action heads and the action embedder untouched), and padded steps, padded action
dims or absent modalities never produce NaN paths.

Latent spaces: z = normalized online-encoder latents (the action and policy heads' inputs, with
gradient: how the encoder learns besides SSL), z̄ = normalized target-encoder latents
(stop-gradient: the predictor's inputs and targets, the latent actions' inputs, and the space
`WorldModel` plans in). With `model.target='frozen'` the encoder is not trained and z = z̄; with
`model.target='online'` z = z̄ *with* gradient: the encoder learns end to end from the prediction
error, and only the anti-collapse terms (`sigreg`, `vic_var`, `vic_cov`) stop it from mapping
every frame to one point.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipelines import schema
from wam_jax.models import decoder as decoder_lib
from wam_jax.models import encoder as encoder_lib
from wam_jax.models import vag
from wam_jax.models.world_model import ModelSpec, WorldActionModel, normalize_latents
from wam_jax.training import anti_collapse, health, masks

sg = jax.lax.stop_gradient

LOSS_TERMS = ("ssl", "tf", "roll", "align", "align_u", "bottleneck", "act", "act_pred", "policy",
              "sigreg", "vic_var", "vic_cov", "recon", "flow", "privileged")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over `mask` (broadcast to x); 0 with exactly-zero gradient when mask is empty."""
    mask = jnp.broadcast_to(mask, x.shape)
    total = jnp.sum(jnp.where(mask, x.astype(jnp.float32), 0.0))
    return total / jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


# A pixel is foreground where its channel-mean distance to the batch's median frame exceeds this
# (normalized units, ~29 of 255 grey levels): far above noise, far below an object's contrast.
FOREGROUND_THRESHOLD = 0.5


def foreground_mean(err: jax.Array, frames: jax.Array, fg_weight: float) -> jax.Array:
    """Per-frame weighted mean of the pixel errors `err [B, T, H, W, C]`: pixels of `frames`
    (normalized, same shape) away from the batch's per-pixel median frame weigh `1 + fg_weight`.
    With a fixed camera the median over the batch's clips is the static background, so the weight
    falls on what moves (PushT's block and agent, ~4 % of a frame) and not on the scenery."""
    if fg_weight == 0:
        return jnp.mean(err, axis=(-3, -2, -1))
    flat = frames.reshape(-1, *frames.shape[-3:])
    background = sg(jnp.median(flat, axis=0))
    fg = jnp.mean(jnp.abs(frames - background), axis=-1, keepdims=True) > FOREGROUND_THRESHOLD
    wts = 1.0 + fg_weight * fg.astype(jnp.float32)
    return jnp.sum(wts * err, axis=(-3, -2, -1)) / jnp.sum(jnp.broadcast_to(wts, err.shape), axis=(-3, -2, -1))


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute error over the trailing (tokens, features) axes."""
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(-2, -1))


def usage_hinge(pre: jax.Array, mask: jax.Array, target_std: float = 0.5) -> jax.Array:
    """VICReg-style variance hinge: mean over dims of relu(target_std - std of `pre [M, du]` over
    the valid rows `mask [M]`). Zero once every dimension is used; keeps u_t from collapsing (the
    bottleneck term of the 'fsq' and 'noisy' latent actions, see `models/latent_actions.py`)."""
    w = mask.astype(jnp.float32)[:, None]
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * pre, axis=0) / n
    var = jnp.sum(w * jnp.square(pre - mean), axis=0) / n
    return jnp.mean(jax.nn.relu(target_std - jnp.sqrt(var + 1e-4)))


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _weight(loss_cfg: Any, name: str, default: float = 0.0) -> float:
    w = loss_cfg.get(name, default) if hasattr(loss_cfg, "get") else getattr(loss_cfg, name, default)
    return float(w)


def validate_batch(batch: Any, spec: ModelSpec) -> None:
    """The batch schema (data_pipelines/schema.py) at the model's sizes, plus what the loss needs:
    T >= 2 frames, and T a multiple of the tubelet when SSL encodes whole clips. Static checks
    on shapes and dtypes only (ValueError naming the key)."""
    schema.validate_batch(batch, image_size=spec.image_size, action_dim=spec.action_dim,
                          proprio_dim=spec.proprio_dim, privileged_dim=spec.privileged_dim)
    t = batch["video"].shape[1]
    if t < 2:
        raise ValueError(f"batch['video'] has {t} frames, expected [B, T, H, W, 3] with T >= 2")
    if spec.ssl_enabled and t % spec.tubelet:
        raise ValueError(
            f"batch['video'] has {t} frames, expected T divisible by model.tubelet={spec.tubelet}")


def _action_chunks(action: jax.Array, mask: jax.Array, h: int) -> tuple[jax.Array, jax.Array]:
    """[B, S, A] -> chunks a_{t:t+h} `[B, S, h, A]` (zero-padded, mask false past the end)."""
    s = action.shape[1]
    a = jnp.pad(action, ((0, 0), (0, h - 1), (0, 0)))
    m = jnp.pad(mask, ((0, 0), (0, h - 1), (0, 0)))
    return (jnp.stack([a[:, i:i + s] for i in range(h)], axis=2),
            jnp.stack([m[:, i:i + s] for i in range(h)], axis=2))


def loss_fn(model: WorldActionModel, target_encoder: nnx.Module | None, batch: dict[str, jax.Array],
            key: jax.Array, loss_cfg: Any, step: jax.Array | int = 0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """All loss terms of one batch (schema in docs/ARCHITECTURE.md) and the health metrics.

    Args:
      model: the trained `WorldActionModel`.
      target_encoder: `model.make_target_encoder()`'s module (EMA of the encoder); ignored (may be
        None) when `model.target='frozen'`, where the target is the untrained encoder itself.
      batch: one batch; shapes and dtypes are checked first (ValueError naming the key).
      key: PRNG key for the bottleneck noise, label dropout and SSL masks.
      loss_cfg: `config.loss`: the term weights (a term with weight 0, or absent, is not
        computed), `kl_weight` (the Gaussian bottleneck's KL inside the bottleneck term),
        `label_dropout` (fraction of labeled steps conditioned on u_t instead of g(a_t)),
        `rollout_k` (steps of the autoregressive rollout term) and `encoder_from_heads`.
      step: the train step (unused by the math today; kept for schedules).

    Returns:
      (scalar loss, metrics): `loss/<term>` per computed term, `health/*`, `la/*`, `act/*`,
      `source/<i>/tf`.
    """
    del step
    spec = model.spec
    validate_batch(batch, spec)
    w = {name: _weight(loss_cfg, name) for name in LOSS_TERMS}
    kl_weight = float(loss_cfg["kl_weight"])
    label_dropout = float(loss_cfg["label_dropout"])
    rollout_k = int(loss_cfg["rollout_k"])
    if w["ssl"] > 0 and not spec.ssl_enabled:
        raise ValueError("config.loss.ssl > 0 needs model.ssl.enabled=True (the SSL predictor)")
    if w["recon"] > 0 and model.frame_decoder is None:
        raise ValueError("config.loss.recon > 0 needs a frame decoder: set model.decoder.size (e.g. 32)")
    if w["privileged"] > 0 and model.privileged_head is None:
        raise ValueError("config.loss.privileged > 0 needs the readout: set model.privileged_dim (PushT: 4)")
    if w["flow"] > 0 and model.flow_head is None:
        raise ValueError("config.loss.flow > 0 needs the flow head: set model.flow_head.depth (e.g. 2)")
    if spec.target == "ema" and target_encoder is None:
        raise ValueError("loss_fn: model.target='ema' needs the target encoder "
                         "(model.make_target_encoder(), updated by EMA)")
    k_la, k_drop, k_ssl, k_flow = jax.random.split(key, 4)

    video = encoder_lib.normalize_video(batch["video"])
    tm = batch["timestep_mask"]
    b, t = tm.shape
    action, emb = batch["action"], batch["embodiment_id"]
    proprio, proprio_mask = batch["proprio"], batch["proprio_mask"]

    # Latents.
    if spec.target == "frozen":
        z = zbar = sg(model.encode_float(video))
    elif spec.target == "online":  # end to end: the targets come from the trained encoder itself
        z = zbar = model.encode_float(video, train=True)
    else:
        zbar = sg(model.encode_float(video, encoder=target_encoder))
        z = model.encode_float(video, train=True)
    terms: dict[str, jax.Array] = {}
    # Anti-collapse terms on the online latents, one sample per token and time step (before
    # `encoder_from_heads` rescales z's gradient: they are the encoder's own objective).
    if w["sigreg"] > 0 or w["vic_var"] > 0 or w["vic_cov"] > 0:
        terms.update(anti_collapse.anti_collapse_terms(z, tm, w, loss_cfg, jax.random.fold_in(key, 3)))
    if w["recon"] > 0:  # squared error per normalized pixel of the downsampled frame
        dec = model.frame_decoder
        target = decoder_lib.downsample(video, dec.size)
        err = jnp.square(dec(z) - target)
        terms["recon"] = masked_mean(foreground_mean(err, target, _weight(loss_cfg, "recon_fg")), tm)
    if w["privileged"] > 0:  # the recorded state read out of every frame's latents, where recorded
        k_hat = model.privileged_head(z.reshape(b, t, -1), emb)
        terms["privileged"] = masked_mean(jnp.square(k_hat - batch["privileged"]),
                                          batch["privileged_mask"] & tm[..., None])
    step_valid = tm[:, :-1] & tm[:, 1:]  # [B, T-1] transition t -> t+1 exists
    a_mask = batch["action_mask"] & step_valid[..., None]  # [B, T-1, A]
    labeled = jnp.any(a_mask, axis=-1)  # [B, T-1]

    # Conditioning: g(a_t) on labeled steps (less the dropped ones), u_t elsewhere.
    use_g = labeled
    if label_dropout > 0:
        use_g = labeled & (jax.random.uniform(k_drop, labeled.shape) >= label_dropout)
    cond, g, la = model.conditioning(zbar, action, batch["action_mask"], emb, use_g, key=k_la)
    if spec.video_cond == "mask":  # ablation: action-free steps see one learned token, not u_t
        w["align"] = w["align_u"] = w["bottleneck"] = 0.0  # the latent actions condition nothing

    # The predictor lives in the target space: its inputs and its targets are z̄, the space
    # `WorldModel` encodes observations and goals into at inference, so training and planning see
    # the same latents and the residual predictor starts exactly at the copy-last baseline. The
    # online encoder learns through the action heads (and SSL); the target follows it by EMA.
    # Teacher forcing: one block-causal pass predicts z̄_{t+1} for every t.
    preds = model.predict_raw(zbar[:, :-1], cond, proprio[:, :-1], proprio_mask[:, :-1])
    err_tf = _l1(preds, zbar[:, 1:])  # [B, T-1]
    terms["tf"] = masked_mean(err_tf, step_valid)

    # k-step autoregressive rollout from the first frame.
    k = min(rollout_k, t - 1)
    if w["roll"] > 0 and k >= 1:
        roll = model.rollout_raw(zbar[:, :1], cond[:, :k], proprio[:, :1], proprio_mask[:, :1], k)
        err_roll = _l1(roll, zbar[:, 1:k + 1])  # [B, k]
        roll_valid = jnp.cumprod(step_valid[:, :k].astype(jnp.int32), axis=1).astype(bool)
        terms["roll"] = masked_mean(err_roll, roll_valid)

    # Alignment of real-action embeddings to (stop-gradient) latent actions, on labeled steps.
    if w["align"] > 0:
        terms["align"] = masked_mean(jnp.mean(jnp.square(g - sg(la.mean)), axis=-1), labeled)
    # The other direction: latent actions pulled towards the (stop-gradient) embedding of the real
    # action, so the codes inferred from frames on action-free video speak the action embedder's
    # language. Without it a collapsed code book drags g(a) along and erases the action.
    if w["align_u"] > 0:
        terms["align_u"] = masked_mean(jnp.mean(jnp.square(la.u - sg(g)), axis=-1), labeled)
    if w["bottleneck"] > 0:
        if spec.bottleneck == "gaussian":
            terms["bottleneck"] = kl_weight * masked_mean(jnp.sum(la.kl, axis=-1), step_valid)
        else:
            du = la.pre.shape[-1]
            terms["bottleneck"] = usage_hinge(la.pre.reshape(-1, du), step_valid.reshape(-1))

    # Action heads (labeled dims only). `loss.encoder_from_heads` scales the gradient they send
    # into the online encoder (forward values unchanged): regressing a few action dims from a small
    # dataset can collapse the encoder to those dims (effective rank 12 -> 2 within 50 PushT
    # steps at scale 1), so SSL-trained encoders keep it small or 0.
    a_hat = None
    scale = _weight(loss_cfg, "encoder_from_heads", 1.0)
    if scale != 1.0 and spec.target != "frozen":
        z = sg(z) + scale * (z - sg(z))
    if w["act"] > 0:
        a_hat = model.inverse_head(z[:, :-1], z[:, 1:], emb)
        terms["act"] = masked_mean(jnp.square(a_hat - action), a_mask)
    if w["act_pred"] > 0:
        # The head learns to decode imagined futures; the predictor is not bent towards latents
        # that decode well (with gradient it trades latent L1 for action-decodability: on PushT
        # the predictor's error rose to 1.2-1.7x copy-last once the head started to learn).
        a_hat_pred = model.inverse_head(zbar[:, :-1], sg(preds), emb)
        terms["act_pred"] = masked_mean(jnp.square(a_hat_pred - action), a_mask)
    if w["policy"] > 0 or w["flow"] > 0:  # goal-conditioned chunks; the goal: the clip's last valid frame
        last = jnp.maximum(jnp.sum(tm.astype(jnp.int32), axis=1) - 1, 0)
        z_goal = jnp.broadcast_to(jnp.take_along_axis(z, last[:, None, None, None], axis=1), z[:, :-1].shape)
        chunk, chunk_mask = _action_chunks(action, a_mask, spec.policy_horizon)
    if w["policy"] > 0:
        chunk_hat = model.policy_head(z[:, :-1], z_goal, emb)
        terms["policy"] = masked_mean(jnp.square(chunk_hat - chunk), chunk_mask)
    if w["flow"] > 0:  # rectified flow: x_tau = (1 - tau) noise + tau chunk, velocity chunk - noise
        k_noise, k_tau, k_keep = jax.random.split(k_flow, 3)
        noise = jax.random.normal(k_noise, chunk.shape)
        tau = jax.random.uniform(k_tau, chunk.shape[:2])
        x_tau = (1.0 - tau[..., None, None]) * noise + tau[..., None, None] * chunk
        head_in = (z[:, :-1], z_goal, proprio[:, :-1] * proprio_mask[:, :-1], x_tau, tau, emb)
        future = None
        if model.flow_head.bridge is not None:
            # The sampler's bridge input (models/vag.py), self-conditioned: the rollout of the chunk a
            # first pass without futures points at, or none (the sampler's first step), half each.
            estimate = sg(x_tau + (1.0 - tau[..., None, None]) * model.flow_head(*head_in))
            future = sg(vag.imagine(model, zbar[:, :-1], estimate, emb, proprio[:, :-1], proprio_mask[:, :-1]))
            future = jnp.where(jax.random.bernoulli(k_keep, 0.5, tau.shape)[..., None, None, None], future, 0.0)
        v = model.flow_head(*head_in, future)
        terms["flow"] = masked_mean(jnp.square(v - (chunk - noise)), chunk_mask)

    # Encoder self-supervision: masked latent prediction on multi-block tube masks.
    if w["ssl"] > 0:
        terms["ssl"] = _ssl_loss(model, target_encoder, video, tm, k_ssl)

    loss = sum(w[name] * value for name, value in terms.items())
    metrics = {"loss": loss}
    metrics.update({f"loss/{name}": value for name, value in terms.items()})
    metrics.update(_health(model, z, zbar, preds, err_tf, step_valid, tm, la, labeled, a_hat,
                           action, a_mask, batch["source_id"]))
    return loss, metrics


def _ssl_loss(model: WorldActionModel, target_encoder: nnx.Module, video: jax.Array,
              tm: jax.Array, key: jax.Array) -> jax.Array:
    spec = model.spec
    b, t = tm.shape
    hp, wp = spec.grid_hw
    grid = (t // spec.tubelet, hp, wp)
    tube = masks.sample_tube_masks(key, b, grid, mask_ratio=spec.ssl_mask_ratio,
                                   num_blocks=spec.ssl_num_blocks, block_scale=spec.ssl_block_scale)
    context = model.encoder(video, keep_idx=tube.keep_idx)  # [B, K, D]
    pred = model.ssl_predictor(context, tube.keep_idx, tube.mask_idx, grid)  # [B, M, D]
    target = sg(normalize_latents(target_encoder(video)))  # [B, L, D]
    target = jnp.take_along_axis(target, tube.mask_idx[..., None], axis=1)
    err = jnp.mean(jnp.abs(pred - target), axis=-1)  # [B, M]
    # A token is valid when every frame of its tubelet is a real (not padded) frame.
    frame_ok = jnp.all(tm.reshape(b, grid[0], spec.tubelet), axis=-1)  # [B, T']
    tok_ok = jnp.take_along_axis(frame_ok, tube.mask_idx // (hp * wp), axis=1)
    return masked_mean(err, tok_ok)


def _health(model: WorldActionModel, z, zbar, preds, err_tf, step_valid, tm, la, labeled, a_hat,
            action, a_mask, source_id) -> dict[str, jax.Array]:
    spec = model.spec
    z, zbar, preds = sg(z), sg(zbar), sg(preds)
    d = zbar.shape[-1]
    tok_mask = jnp.broadcast_to(tm[:, :, None], zbar.shape[:3]).reshape(-1)
    out = {
        "health/target_std": health.feature_std(zbar.reshape(-1, d), tok_mask),
        "health/target_eff_rank": health.effective_rank(*health.masked_gram(zbar.reshape(-1, d), tok_mask)),
    }
    if spec.target == "ema":
        out["health/online_eff_rank"] = health.effective_rank(*health.masked_gram(z.reshape(-1, d), tok_mask))
    err_copy = _l1(zbar[:, :-1], zbar[:, 1:])
    copy = masked_mean(err_copy, step_valid)
    pred = masked_mean(sg(err_tf), step_valid)
    out["health/copy_l1"] = copy
    out["health/pred_l1"] = pred
    out["health/pred_to_copy"] = pred / jnp.maximum(copy, 1e-8)
    pred_mask = jnp.broadcast_to(step_valid[:, :, None], preds.shape[:3]).reshape(-1)
    out["health/pred_std"] = health.feature_std(preds.reshape(-1, d), pred_mask)

    # Latent actions over every valid transition.
    flat_valid = step_valid.reshape(-1)
    du = la.mean.shape[-1]
    out["la/u_std"] = health.feature_std(sg(la.mean).reshape(-1, du), flat_valid)
    if spec.bottleneck == "fsq":
        num_codes = model.latent_actions.num_codes
        usage, entropy = health.code_usage(la.codes.reshape(-1, du), flat_valid, num_codes)
        out["la/code_usage"] = usage
        out["la/code_entropy"] = entropy
        out["la/code_perplexity"] = jnp.exp(entropy)
        out["la/max_entropy"] = jnp.asarray(math.log(num_codes), jnp.float32)
    else:
        out["la/kl_per_dim"] = masked_mean(jnp.mean(sg(la.kl), axis=-1), step_valid)
    out["act/labeled_frac"] = masked_mean(labeled.astype(jnp.float32), step_valid)
    if a_hat is not None:
        out["act/r2"] = health.r_squared(sg(a_hat), action, a_mask)

    per_src = health.per_source(sg(err_tf), step_valid, source_id, spec.num_sources)
    per_src_copy = health.per_source(err_copy, step_valid, source_id, spec.num_sources)
    onehot = jax.nn.one_hot(source_id, spec.num_sources, dtype=jnp.float32)
    frac = jnp.mean(onehot, axis=0)  # share of the batch (0: source absent, its losses read 0)
    for i in range(spec.num_sources):
        out[f"source/{i}/frac"] = frac[i]
        out[f"source/{i}/tf"] = per_src[i]
        out[f"source/{i}/copy_l1"] = per_src_copy[i]
    return out
