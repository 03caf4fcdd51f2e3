"""`model.init_from=PATH`: start a new run's encoder from pretrained weights.

PATH (local or `gs://`) may be
- a Hugging Face V-JEPA 2 directory (`config.json` with `model.safetensors`, or sharded through
  `model.safetensors.index.json`), e.g. a download of `facebook/vjepa2-vitl-fpc64-256`: its
  `config.json` architecture is compared with `model.*` first, naming each field to set;
- a PyTorch checkpoint file (`.pt`, `.pth`, `.bin`: Meta's V-JEPA 2 checkpoint, whose
  `target_encoder` is taken, else `encoder`, or a Hugging Face `state_dict`); needs the `torch`
  extra;
- a wam_jax export directory (`wam-export`, or a run's `export/`) or its `encoder.safetensors`:
  the encoder exactly as exported, the pooled projector and its running statistics included;
- any other `.safetensors` file holding a V-JEPA 2 state dict.

With `model.init_scope='all'` PATH is a wam_jax export written with its predictor (`wam-export
--with_predictor`, or a run's `export/`) and every variable of the new model found there (encoder,
predictor, heads, statistics) starts from it: to go on training a run under another config, e.g.
its predictor on its frozen encoder. Variables the export lacks keep their initialization and are
logged; a shape that differs is an error naming the key.

V-JEPA 2 weights go through `wam_jax.models.vjepa2_convert` (every key accounted for, shapes
checked, mismatches named); a pooled model's projector, which V-JEPA 2 does not have, keeps its
random initialization. Only a new run reads PATH: a resumed run restores its own checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

log = logging.getLogger(__name__)

FLAG = "--config.model.init_from"
EXPORT_ENCODER = "encoder.safetensors"  # wam_jax.inference.artifacts.ENCODER_SAFETENSORS
EXPORT_PARAMS = "params"  # wam_jax.inference.artifacts.PARAMS_DIR: Orbax {"target"[, "params", "model_state"]}
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar")
# V-JEPA 2 config.json field -> (model config field, how to read it)
_HF_FIELDS = (("crop_size", "image_size"), ("patch_size", "patch_size"), ("tubelet_size", "tubelet"),
              ("hidden_size", "encoder.width"), ("num_hidden_layers", "encoder.depth"),
              ("num_attention_heads", "encoder.heads"), ("mlp_ratio", "encoder.mlp_ratio"))


def _key(path: Any) -> str:
    """'a/b/c' of an nnx flat-state path or a jax tree path (the export's flat key layout)."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


class InitFromError(ValueError):
    """`model.init_from` names something that cannot initialize this model's encoder."""


def load_encoder_state(model_cfg: Any, encoder: nnx.Module) -> nnx.State:
    """Host arrays for `nnx.update(encoder, state)` from `model_cfg.init_from`.

    `encoder` may be abstract (`nnx.eval_shape`): only its structure, shapes and dtypes are read.
    """
    value = str(model_cfg.init_from)
    if value.startswith("REQUIRED"):  # a config that only makes sense from pretrained weights
        raise InitFromError(f"{FLAG} must be set for this config ({value.split(':', 1)[-1].strip()})")
    path = epath.Path(value)
    state = _load(path, model_cfg, encoder)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))
    log.info("encoder initialized from %s (%.1fM values)", path, n / 1e6)
    return state


def load_model_state(model_cfg: Any, model: nnx.Module) -> nnx.State:
    """`model.init_scope='all'`: host arrays for `nnx.update(model, state)`, every variable of
    `model` (may be abstract) that the export holds."""
    import orbax.checkpoint as ocp

    path = epath.Path(str(model_cfg.init_from))
    params_dir = path / EXPORT_PARAMS
    if not (params_dir / "_CHECKPOINT_METADATA").exists() and not (params_dir / "_METADATA").exists():
        raise InitFromError(f"{FLAG}={path}: --config.model.init_scope=all needs a wam_jax export directory "
                            f"(no {params_dir})")
    restored = ocp.PyTreeCheckpointer().restore(params_dir.resolve())  # Orbax wants an absolute path
    if "params" not in restored:
        raise InitFromError(f"{FLAG}={path} holds only the encoder; --config.model.init_scope=all needs an "
                            f"export with the predictor (wam-export --with_predictor)")
    flat: dict[str, np.ndarray] = {}
    for item in ("params", "model_state"):
        leaves = jax.tree_util.tree_flatten_with_path(restored.get(item, {}))[0]
        flat.update({_key(keys): np.asarray(x) for keys, x in leaves})
    ours = [(_key(keys), keys, var) for keys, var in nnx.to_flat_state(nnx.state(model))]
    shapes = [f"{k}: {tuple(flat[k].shape)} vs {tuple(var.shape)}" for k, _, var in ours
              if k in flat and tuple(flat[k].shape) != tuple(var.shape)]
    if shapes:
        raise InitFromError(f"{FLAG}={path} does not fit this model: shapes (file vs model) {shapes[:8]}"
                            f"{' ...' if len(shapes) > 8 else ''}")
    kept = [k for k, _, _ in ours if k not in flat]
    unused = sorted(set(flat) - {k for k, _, _ in ours})
    enc_kept, enc_unused = ([k for k in keys if k.startswith("encoder/")] for keys in (kept, unused))
    if enc_kept and enc_unused:  # the export's encoder is another architecture, not a smaller model
        raise InitFromError(f"{FLAG}={path}: its encoder does not fit this model's (this model has "
                            f"{enc_kept[:4]}, the export {enc_unused[:4]}): set the export's model.stem "
                            f"and model.pool")
    if kept:
        log.warning("%s=%s has no %d variables; they keep their initialization: %s%s", FLAG, path, len(kept),
                    kept[:8], " ..." if len(kept) > 8 else "")
    if unused:
        log.info("%s=%s: %d variables this model does not have, unused: %s", FLAG, path, len(unused), unused[:8])
    out = [(keys, var.replace(np.asarray(flat[k], var.dtype))) for k, keys, var in ours if k in flat]
    log.info("model initialized from %s (%d of %d variables)", path, len(out), len(ours))
    return nnx.from_flat_state(out)


def _load(path: epath.Path, model_cfg: Any, encoder: nnx.Module) -> nnx.State:
    if not path.exists():
        raise InitFromError(f"{FLAG}={path}: no such file or directory")
    if path.is_dir():
        if (path / EXPORT_ENCODER).exists():
            return _from_export(_read_safetensors(path / EXPORT_ENCODER), encoder, path / EXPORT_ENCODER)
        if (path / "config.json").exists() and any((path / f).exists() for f in HF_WEIGHTS):
            check_hf_config(json.loads((path / "config.json").read_text()), model_cfg, path / "config.json")
            return _from_vjepa2(_read_hf_dir(path), encoder, path)
        raise InitFromError(f"{FLAG}={path}: a directory without {EXPORT_ENCODER} (a wam_jax export) or "
                            f"config.json with {' / '.join(HF_WEIGHTS)} (a Hugging Face V-JEPA 2 model)")
    if path.name.endswith(".safetensors"):
        flat = _read_safetensors(path)
        if _is_export_layout(flat):
            return _from_export(flat, encoder, path)
        return _from_vjepa2(flat, encoder, path)
    if path.suffix in TORCH_SUFFIXES:
        return _from_vjepa2(_read_torch(path), encoder, path)
    raise InitFromError(f"{FLAG}={path}: expected a directory, a .safetensors file or a PyTorch checkpoint "
                        f"({', '.join(TORCH_SUFFIXES)})")


def check_hf_config(hf: Mapping[str, Any], model_cfg: Any, where: Any) -> None:
    """The model config must have the checkpoint's architecture: names every field that differs."""
    wrong = []
    for hf_key, ours in _HF_FIELDS:
        if hf_key not in hf:
            continue
        want = hf[hf_key]
        if isinstance(want, list | tuple):
            want = want[0]
        have = model_cfg
        for part in ours.split("."):
            have = have[part]
        if float(have) != float(want):
            wrong.append(f"--config.model.{ours}={want} (config has {have})")
    if wrong:
        raise InitFromError(f"{FLAG}: {where} describes another architecture; set " + ", ".join(wrong))


def _is_export_layout(flat: Mapping[str, np.ndarray]) -> bool:
    return any(k.startswith("blocks/") or k.startswith("patch_embed/") for k in flat)


def _from_vjepa2(state_dict: Mapping[str, Any], encoder: nnx.Module, where: Any) -> nnx.State:
    from wam_jax.models import vjepa2_convert

    key = None
    if any(isinstance(v, Mapping) for v in state_dict.values()):  # a full Meta checkpoint
        key = next((k for k in ("target_encoder", "encoder") if k in state_dict), None)
        if key is None:
            raise InitFromError(f"{FLAG}={where}: a checkpoint of dicts without 'target_encoder' or 'encoder'; "
                                f"top-level keys {sorted(state_dict)[:12]}")
    try:
        return vjepa2_convert.convert_state_dict(state_dict, encoder, checkpoint_key=key)
    except ValueError as e:
        raise InitFromError(f"{FLAG}={where}: {e}") from e


def _from_export(flat: Mapping[str, np.ndarray], encoder: nnx.Module, where: Any) -> nnx.State:
    """A wam_jax export's flat `a/b/c` keys -> the encoder's full state (params and statistics)."""
    state = nnx.state(encoder)
    ours = {_key(path): var for path, var in nnx.to_flat_state(state)}
    missing = sorted(set(ours) - set(flat))
    unexpected = sorted(set(flat) - set(ours))
    shapes = [f"{k}: {tuple(flat[k].shape)} vs {tuple(ours[k].shape)}" for k in sorted(set(ours) & set(flat))
              if tuple(flat[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        raise InitFromError(
            f"{FLAG}={where} does not fit this model's encoder: "
            + "; ".join(part for part in (
                f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "",
                f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "",
                f"shapes (file vs model) {shapes[:8]}" if shapes else "") if part)
            + " (a pooled export needs the same model.pool, a patch-grid one model.pool.kind='none'; "
              "a conv-stem export model.stem='conv')")
    out = [(path, var.replace(np.asarray(flat[_key(path)], var.dtype)))
           for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(out)


def _read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return dict(load(path.read_bytes()))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise InitFromError(f"{FLAG}={path}: not a readable safetensors file ({e})") from e


def _read_hf_dir(path: epath.Path) -> dict[str, Any]:
    if (path / "model.safetensors").exists():
        return _read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, Any] = {}
        for shard in shards:
            out.update(_read_safetensors(path / shard))
        return out
    return _read_torch(path / "pytorch_model.bin")


def _read_torch(path: epath.Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise InitFromError(f"{FLAG}={path}: reading a PyTorch checkpoint needs the torch extra "
                            f"(pip install -e '.[torch]'), or convert it to safetensors") from e
    with path.open("rb") as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise InitFromError(f"{FLAG}={path}: holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)
