"""Linear probes of a trained encoder against the PushT simulator's ground truth (`wam-eval --probe=pusht`).

Fresh scripted episodes (seeds disjoint from every training, test and planning seed) are rendered
exactly as the converted data holds frames; every `stride`-th frame is encoded. Ridge probes
(`wam_jax.inference.probes`) then predict agent x, y and block x, y, cos(angle), sin(angle) on
held-out episodes from: the trained encoder's latents (the target encoder, the space planning
uses), the same architecture at its random initialization, and the raw pixels.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

PROBE_SEED_BASE = 970_000  # disjoint from the demo data (0+, 300_000+, 600_000+), wam-plan (900_000+) and the example (950_000+)
TARGETS = ("agent_x", "agent_y", "block_x", "block_y", "block_cos", "block_sin")
# The block moves in few frames of an episode, so a probe sees about as many block poses as it
# has episodes: fitted on 30 (of 45) the block probe is starved (one encoder: block R^2 0.70,
# pixels 0.62; on 200 of 300: 0.84 and 0.82, BENCHMARKS.md §11.17). The agent moves every frame.
PROBE_EPISODES = 300


def pusht_frames(episodes: int, *, image_size: int, stride: int, steps: int = 100, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 `[n, S, S, 3]`, targets `[n, 6]`, episode ids `[n]`) of scripted episodes with
    extra exploration (noise 1.5, as the action-free demo videos), every `stride`-th frame."""
    from sim import pusht
    from sim.rollouts import rollout

    env = pusht.make_env(pusht.RENDER_SIZE, obs_type="state")
    frames, targets, groups = [], [], []
    try:
        for e in range(episodes):
            r = rollout(PROBE_SEED_BASE + seed * 10_000 + e, steps, noise_scale=1.5, env=env)
            for t in range(0, len(r.images), stride):
                frames.append(pusht.to_model_size(r.images[t], image_size))
                x, y, a = r.block_pose[t]
                targets.append([*r.agent_pos[t], x, y, np.cos(a), np.sin(a)])
                groups.append(e)
    finally:
        env.close()
    return np.stack(frames), np.asarray(targets, np.float64), np.asarray(groups)


def parts_r2(r2: dict[str, float]) -> dict[str, float]:
    """Per-target R^2 (`TARGETS`) -> the mean over each part: block position, agent position,
    block angle (its cos and sin)."""
    return {"block_pos": (r2["block_x"] + r2["block_y"]) / 2, "agent_pos": (r2["agent_x"] + r2["agent_y"]) / 2,
            "block_angle": (r2["block_cos"] + r2["block_sin"]) / 2}


def in_batches(fn: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """`fn` (a jitted function of `[batch, ...]` rows) over `x` in fixed-size batches, the last one
    zero-padded (one compile); its outputs for the real rows, concatenated."""
    import jax

    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(jax.device_get(fn(padded)))[: len(chunk)])
    return np.concatenate(out)


def _per_frame(fn: Any, frames: np.ndarray) -> np.ndarray:
    """`fn` of one-frame clips `[batch, 1, S, S, 3]` over uint8 `frames`, flattened per frame `[n, F]`."""
    return in_batches(lambda v: fn(v[:, None]), frames).reshape(len(frames), -1)


def _encode_all(model: Any, encoder: Any, frames: np.ndarray) -> np.ndarray:
    from flax import nnx

    fn = nnx.jit(lambda m, e, v: m.encode(v, encoder=e))
    return _per_frame(lambda v: fn(model, encoder, v), frames)


def _tokens_all(encoder: Any, frames: np.ndarray) -> np.ndarray:
    """Each frame's transformer tokens before pooling, flattened `[n, gh * gw * width]`."""
    from flax import nnx

    from wam_jax.models.encoder import normalize_video

    fn = nnx.jit(lambda e, v: e.frame_tokens(normalize_video(v)))
    return _per_frame(lambda v: fn(encoder, v), frames)


def probe_pusht(restored: Any, *, episodes: int = PROBE_EPISODES, seed: int = 0, scene_basis: np.ndarray | None = None
                ) -> dict[str, Any]:
    """Probe R^2 per target for the trained encoder, a randomly initialised one and pixels (and,
    for pooled latents, the trained encoder's tokens before pooling); with
    `scene_basis` (`WorldModel.state_subspace`), also the trained latents without its directions
    (what `wam-plan --cost=scene` measures distance in)."""
    from flax import nnx

    from wam_jax.inference import probes
    from wam_jax.models.world_model import build_model

    t0 = time.perf_counter()
    cfg = restored.config
    from data_pipelines.window_index import frame_stride
    from sim.pusht import CONTROL_FPS

    fps = float(cfg.data.target_fps)
    stride = frame_stride(CONTROL_FPS, fps) if fps > 0 else 1  # the training frame stride
    frames, y, groups = pusht_frames(episodes, image_size=int(cfg.model.image_size), stride=stride, seed=seed)
    fresh = build_model(cfg.model, nnx.Rngs(int(cfg.seed) + 1))
    features = {
        "trained encoder": _encode_all(restored.model, restored.target, frames),
        "random-init encoder": _encode_all(fresh, fresh.encoder, frames),
        "pixels": frames.reshape(len(frames), -1).astype(np.float32) / 255.0,
    }
    if str(cfg.model.pool.kind) != "none":  # what the pooling was given: does it hold what the latent lacks?
        features["trained, tokens unpooled"] = _tokens_all(restored.target, frames)
    if scene_basis is not None:
        from wam_jax.inference.state_subspace import remove_subspace

        features["trained, agent removed"] = remove_subspace(features["trained encoder"], scene_basis)
    out: dict[str, Any] = {"episodes": episodes, "frames": int(len(frames)), "stride": stride,
                           "targets": list(TARGETS), "probes": {}}
    for name, x in features.items():
        res = probes.linear_probe(x, y, groups, names=TARGETS, seed=seed)
        r2 = res["r2"]
        res.update({f"{part}_r2": v for part, v in parts_r2(r2).items()})
        # What the features' distance measures: the agent (2) or the block pose (4 columns).
        res["variance_explained"] = {part: probes.explained_variance(x, y[:, cols], groups, seed=seed)
                                     for part, cols in (("agent", slice(0, 2)), ("block", slice(2, 6)))}
        res["distance_rank"] = {part: probes.distance_rank(x, y[:, cols], seed=seed)
                                for part, cols in (("agent", slice(0, 2)), ("block", slice(2, 4)))}
        out["probes"][name] = res
    out["seconds"] = time.perf_counter() - t0
    return out


def reconstruction_grid(wm: Any, frames: np.ndarray) -> np.ndarray:
    """uint8 `[2 S, n S, 3]`: `frames` `[n, S, S, 3]` (top row) over what the model's frame decoder
    draws from their latents (bottom row, nearest-resized to S): what the latent keeps, at a
    glance. A blob where the block's outline should be says the decoder did not draw the angle:
    the latent may lack it, or the decoder may not have learned to draw it yet (even from the true
    state the `upsample` decoder draws it only after some 6000 steps of 64 frames: BENCHMARKS.md
    §11.19)."""
    from PIL import Image

    drawn = wm.decode(wm.encode(frames[:, None]))
    drawn = drawn.reshape(len(frames), -1, *drawn.shape[-3:])[:, 0]
    s = frames.shape[1]
    drawn = [np.asarray(Image.fromarray(d).resize((s, s), Image.Resampling.NEAREST)) for d in drawn]
    return np.concatenate([np.concatenate(list(frames), 1), np.concatenate(drawn, 1)], 0)


def write_reconstructions(wm: Any, path: str, *, episodes: int = 12, seed: int = 1) -> str:
    """`reconstruction_grid` of the first frames of `episodes` fresh probe episodes, saved 3x as a
    PNG at `path` (local or gs://)."""
    from PIL import Image

    from data_pipelines import paths

    frames, _, groups = pusht_frames(episodes, image_size=wm.image_size, stride=1, steps=1, seed=seed)
    grid = reconstruction_grid(wm, frames[np.unique(groups, return_index=True)[1]])
    img = Image.fromarray(grid).resize((3 * grid.shape[1], 3 * grid.shape[0]), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    paths.write_atomic(path, buf.getvalue())
    return path


def format_probe(result: dict[str, Any]) -> str:
    lines = [f"Linear probes to the simulator state ({result['frames']} frames of {result['episodes']} unseen "
             f"episodes; R^2 on held-out episodes)",
             f"  {'features':<22s}{'dim':>7s}{'block pos':>11s}{'block angle':>13s}{'agent pos':>11s}"
             f"{'var: agent':>12s}{'block':>7s}{'dist rank: agent':>18s}{'block':>7s}"]
    for name, r in result["probes"].items():
        ve, dr = r["variance_explained"], r["distance_rank"]
        lines.append(f"  {name:<22s}{r['feature_dim']:>7d}{r['block_pos_r2']:>11.3f}{r['block_angle_r2']:>13.3f}"
                     f"{r['agent_pos_r2']:>11.3f}{ve['agent']:>12.3f}{ve['block']:>7.3f}{dr['agent']:>18.3f}"
                     f"{dr['block']:>7.3f}")
    lines.append("  var: share of the features' variance a cubic in the agent position / block pose explains; "
                 "dist rank: Spearman of feature distance vs agent / block distance over frame pairs (a planner's "
                 "latent cost ranks what dominates)")
    return "\n".join(lines)
