"""Export a trained model's encoder (and optionally its predictor) as framework-free artifacts.

    wam-export --workdir=runs/pusht_small --output=exports/pusht [--with_predictor] [--step=N]

writes

    OUT/
      encoder.jax_export          serialized `jax.export.Exported`: (params, video) -> latents, with
                                  symbolic batch and time dims: uint8 [b, t, H, W, 3] -> f32 [b, t, N, D]
      encoder.safetensors         its params as a flat {"a/b/c": array} dict: exactly the first argument
      preprocessing.json          input size, layout, value range, normalization, output layout
      params/                     Orbax pytree {"target"} (+ {"params", "model_state"} with the predictor)
      config.json, stats.json     the training config and dataset statistics (`loader.mixture_info`)
      example_input.npy           uint8 [2, 2, H, W, 3]
      example_output.npy          the in-framework encoder's latents for it
      predictor.jax_export        (--with_predictor) (params, latents [b, s, N, D], action [b, s, A],
      predictor.safetensors        action_mask [b, s, A], embodiment_id [b]) -> next latents [b, s, N, D]
      export.json                 manifest, written last: its presence marks a complete export

The artifacts need only `jax` (+ `safetensors` or `numpy`) to run: `load_encoder(OUT)` (this module
imports no Flax at module level), or by hand:

    exp = jax.export.deserialize(open("OUT/encoder.jax_export", "rb").read())
    latents = exp.call(safetensors.numpy.load_file("OUT/encoder.safetensors"), video_uint8)

The encoder is the target encoder (EMA / frozen) followed by the world model's latent normalization:
the latent space the predictor predicts into. Normalization of pixels happens inside the artifact
(uint8 in), so a consumer only has to resize frames to `H x W`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data_pipelines import paths
from wam_jax.inference.artifacts import (
    CONFIG_JSON,
    ENCODER_EXPORT,
    ENCODER_SAFETENSORS,
    EXAMPLE_INPUT,
    EXAMPLE_OUTPUT,
    EXPORT_JSON,
    FORMAT,
    PARAMS_DIR,
    PREDICTOR_EXPORT,
    PREDICTOR_FILES,
    PREDICTOR_SAFETENSORS,
    PREPROCESSING_JSON,
    REQUIRED_FILES,
    STATS_JSON,
    VERSION,
    check_frames,
    read_manifest,
)

log = logging.getLogger(__name__)

# Lowered for every platform so one artifact serves CPU, GPU and TPU consumers.
PLATFORMS = ("cpu", "cuda", "tpu")


# ----------------------------------------------------------------------------------------------
# Flat parameter dicts (safetensors keys == the exported function's first argument)


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_params(tree: Any) -> tuple[dict[str, np.ndarray], Any, list[str]]:
    """Nested pure dict -> ({"a/b/c": host array}, treedef, keys in treedef leaf order)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = ["/".join(_key_str(k) for k in path) for path, _ in leaves]
    if len(set(keys)) != len(keys):
        raise ValueError("parameter paths collide after flattening with '/'")
    flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(x))) for k, (_, x) in zip(keys, leaves, strict=True)}
    return flat, treedef, keys


def _unflattener(treedef: Any, keys: list[str]):
    def unflatten(flat: Mapping[str, jax.Array]) -> Any:
        return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])
    return unflatten


# ----------------------------------------------------------------------------------------------
# Reading


class ExportedEncoder:
    """The exported encoder as a plain callable: uint8 frames -> float32 latents (numpy).

    Needs only jax + safetensors: usable in a process that never imports Flax or wam_jax.models.
    """

    def __init__(self, export_dir: str):
        from safetensors.numpy import load

        self.export_dir = export_dir
        self.manifest = read_manifest(export_dir)
        root = epath.Path(export_dir)
        self.preprocessing = json.loads((root / PREPROCESSING_JSON).read_text())
        self.exported = jax.export.deserialize(bytearray((root / ENCODER_EXPORT).read_bytes()))
        self.params = {k: jnp.asarray(v) for k, v in load((root / ENCODER_SAFETENSORS).read_bytes()).items()}
        self.image_size = int(self.preprocessing["input"]["shape"][2])
        self._call = jax.jit(self.exported.call)

    def __call__(self, frames: Any, *, resize: bool = False) -> np.ndarray:
        """`[H, W, 3]` / `[T, H, W, 3]` / `[B, T, H, W, 3]` uint8 -> `[..., N, D]` float32."""
        video, lead = check_frames(frames, self.image_size, resize=resize)
        z = np.asarray(self._call(self.params, jnp.asarray(video)))
        return z.reshape(lead + z.shape[-2:])

    def __repr__(self) -> str:
        out = self.preprocessing["output"]["shape"]
        return f"ExportedEncoder({self.export_dir!r}, input uint8 [b, t, {self.image_size}, {self.image_size}, 3] -> {out})"


def load_encoder(export_dir: str) -> ExportedEncoder:
    """`wam_jax.load_encoder(OUT)`: the exported encoder of `wam-export`, framework-free."""
    return ExportedEncoder(paths.absolute(export_dir))


# ----------------------------------------------------------------------------------------------
# Writing


def _serialize(fn, arg_specs: tuple, platforms: tuple[str, ...]) -> tuple[bytes, tuple[str, ...]]:
    """`jax.export` for every platform in `platforms` that lowers here (all, normally)."""
    try:
        exp = jax.export.export(jax.jit(fn), platforms=platforms)(*arg_specs)
    except Exception as e:  # noqa: BLE001 - e.g. a backend-specific kernel; fall back to this backend
        here = (jax.default_backend(),)
        log.warning("multi-platform export %s failed (%s: %s); exporting for %s only", platforms,
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", here)
        exp = jax.export.export(jax.jit(fn), platforms=here)(*arg_specs)
    return exp.serialize(), tuple(exp.platforms)


def _save_safetensors(path: epath.Path, flat: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> None:
    from safetensors.numpy import save

    paths.write_atomic(path, save(dict(flat), metadata=dict(meta)))


def _save_npy(path: epath.Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    paths.write_atomic(path, buf.getvalue())


def _spec(flat: Mapping[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def export_model(path: str, output: str, *, step: int | None = None, with_predictor: bool = False,
                 overwrite: bool = False, platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
    """Writes the export of the checkpoint at `path` (workdir, latest or `step`) to `output`.

    Returns the manifest. `output` must not exist unless `overwrite` (then it is replaced).
    """
    from flax import nnx

    from wam_jax.inference import load
    from wam_jax.models import encoder as encoder_lib
    from wam_jax.models.world_model import latent_space

    t0 = time.time()
    output = paths.absolute(output)
    out = epath.Path(output)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it")
        out.rmtree()
    restored = load.restore(path, step)
    if restored.kind != "checkpoint":
        raise ValueError(f"{path} is already an export; export from a training workdir")
    cfg = restored.config
    s = int(cfg.model.image_size)
    n, d = restored.target.latent_shape
    pooled = restored.target.projector is not None
    pg = restored.target.pool_grid
    pool_how = "attention-pooled" if restored.target.attn_pool is not None else "mean-pooled"
    out.mkdir(parents=True)

    # -- encoder artifact: f(params_flat, video) with params as an argument, not constants. It
    # runs the model's own encode path on an array-free copy of the model (`encode` reads only the
    # model's static spec when given the encoder), so no trained array is baked into the artifact.
    enc_graph, enc_state = nnx.split(restored.target)
    target_pure = _host(nnx.to_pure_dict(enc_state))
    enc_flat, enc_treedef, enc_keys = flatten_params(target_pure)
    enc_unflatten = _unflattener(enc_treedef, enc_keys)
    host = restored.abstract.module()

    def encode_fn(params: Mapping[str, jax.Array], video: jax.Array) -> jax.Array:
        return host.encode(video, encoder=nnx.merge(enc_graph, enc_unflatten(params)))

    b, t = jax.export.symbolic_shape("b, t")
    video_spec = jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.uint8)
    blob, enc_platforms = _serialize(encode_fn, (_spec(enc_flat), video_spec), platforms)
    paths.write_atomic(out / ENCODER_EXPORT, blob)
    _save_safetensors(out / ENCODER_SAFETENSORS, enc_flat,
                      {"format": FORMAT, "artifact": ENCODER_EXPORT})

    # -- example input / output, from the in-framework encoder (not the artifact).
    rng = np.random.default_rng(0)
    example = rng.integers(0, 256, size=(2, 2, s, s, 3), dtype=np.uint8)
    expected = np.asarray(jax.jit(encode_fn)(enc_flat, example))
    _save_npy(out / EXAMPLE_INPUT, example)
    _save_npy(out / EXAMPLE_OUTPUT, expected)

    # -- preprocessing spec.
    gh = gw = s // int(cfg.model.patch_size)
    pre = {
        "input": {"name": "video", "shape": ["b", "t", s, s, 3], "dtype": "uint8", "layout": "BTHWC",
                  "color": "RGB", "value_range": [0, 255]},
        "resize": {"size": [s, s], "method": "bilinear (antialiased)",
                   "note": "resize frames to this size before calling; the artifact does not resize"},
        "normalization": {"applied_inside_artifact": True, "formula": "(x / 255 - mean) / std",
                          "scale": 1.0 / 255.0, "mean": list(encoder_lib.IMAGENET_MEAN),
                          "std": list(encoder_lib.IMAGENET_STD)},
        "output": ({"shape": ["b", "t", n, d], "dtype": "float32", "grid": [pg, pg],
                    "token_order": (f"one vector per frame: the patch tokens {pool_how} and projected"
                                    if pg == 1 else "row-major over the (grid, grid) regions of the patch "
                                    "grid, each region's tokens mean-pooled and projected"),
                    "normalization": "none (the projector's output, the predictor's latent space)"}
                   if pooled else
                   {"shape": ["b", "t", n, d], "dtype": "float32", "grid": [gh, gw],
                    "token_order": "row-major over the (H/p, W/p) patch grid",
                    "normalization": "per-token layer norm without affine (the predictor's latent space)"}),
        "patch_size": int(cfg.model.patch_size), "tubelet": int(cfg.model.tubelet),
        "per_frame": True, "encoder": "target", "target_type": str(cfg.model.target),
    }
    _write_json(out / PREPROCESSING_JSON, pre)

    # -- predictor artifact (optional): one teacher-forced step from embedded real actions.
    files = list(REQUIRED_FILES)
    pred_info = None
    arrays: dict[str, Any] = {"target": target_pure}
    if with_predictor:
        model = restored.model
        pred_graph, pred_state = nnx.split(model.predictor)
        emb_graph, emb_state = nnx.split(model.action_embedder)
        pred_pure = {"predictor": _host(nnx.to_pure_dict(pred_state)),
                     "action_embedder": _host(nnx.to_pure_dict(emb_state))}
        p_flat, p_treedef, p_keys = flatten_params(pred_pure)
        p_unflatten = _unflattener(p_treedef, p_keys)
        a_dim = int(cfg.model.action_dim)

        def predict_fn(params, latents, action, action_mask, embodiment_id):
            tree = p_unflatten(params)
            predictor = nnx.merge(pred_graph, tree["predictor"])
            embedder = nnx.merge(emb_graph, tree["action_embedder"])
            cond = embedder(action, action_mask, embodiment_id)
            return latent_space(predictor(latents, cond), model.spec.pooled)

        bs, ss = jax.export.symbolic_shape("b, s")
        specs = (_spec(p_flat), jax.ShapeDtypeStruct((bs, ss, n, d), jnp.float32),
                 jax.ShapeDtypeStruct((bs, ss, a_dim), jnp.float32),
                 jax.ShapeDtypeStruct((bs, ss, a_dim), jnp.bool_), jax.ShapeDtypeStruct((bs,), jnp.int32))
        blob, pred_platforms = _serialize(predict_fn, specs, platforms)
        paths.write_atomic(out / PREDICTOR_EXPORT, blob)
        _save_safetensors(out / PREDICTOR_SAFETENSORS, p_flat,
                          {"format": FORMAT, "artifact": PREDICTOR_EXPORT})
        files += list(PREDICTOR_FILES)
        _, params, rest = nnx.split(model, model.trainable_filter, ...)
        arrays["params"] = _host(nnx.to_pure_dict(params))
        arrays["model_state"] = _host(nnx.to_pure_dict(rest))
        pred_info = {"inputs": ["params", "latents [b, s, N, D] f32", "action [b, s, A] f32 (normalized)",
                                "action_mask [b, s, A] bool", "embodiment_id [b] int32"],
                     "output": "predicted latents of steps 1..s [b, s, N, D] f32", "platforms": list(pred_platforms),
                     "action_dim": a_dim}

    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ck:
        ck.save(out / PARAMS_DIR, args=ocp.args.PyTreeSave(arrays))
    _write_json(out / CONFIG_JSON, json.loads(cfg.to_json_best_effort()))
    _write_json(out / STATS_JSON, restored.info)

    manifest = {
        "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": paths.absolute(path), "step": restored.step, "with_predictor": bool(with_predictor),
        "jax_version": jax.__version__, "files": files,
        "encoder": {"inputs": ["params", "video uint8 [b, t, H, W, 3]"], "output": "latents [b, t, N, D] f32",
                    "image_size": s, "latent_shape": [n, d], "platforms": list(enc_platforms),
                    "num_params": int(sum(v.size for v in enc_flat.values()))},
        "predictor": pred_info,
    }
    _write_json(out / EXPORT_JSON, manifest)  # last: marks the export complete
    log.info("exported step %s of %s to %s in %.1fs", restored.step, path, output, time.time() - t0)
    return manifest


def export(workdir: str, output: str, *, overwrite: bool = True, **kwargs: Any) -> dict[str, Any]:
    """`export_model` replacing an existing `output` by default: what a re-run pipeline (the demo)
    wants, since the export is a pure function of the checkpoint."""
    return export_model(workdir, output, overwrite=overwrite, **kwargs)


def _write_json(path: epath.Path, obj: Any) -> None:
    paths.write_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
