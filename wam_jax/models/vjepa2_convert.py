"""V-JEPA 2 (PyTorch) encoder weights -> `VideoEncoder` params.

Supported state-dict layouts (values: torch tensors, NumPy or JAX arrays; any float dtype):

- Hugging Face `transformers` (`VJEPA2Model.state_dict()`, e.g. `facebook/vjepa2-vitl-fpc64-256`):
  `encoder.embeddings.patch_embeddings.proj.{weight,bias}`,
  `encoder.layer.N.norm1|norm2.{weight,bias}`,
  `encoder.layer.N.attention.query|key|value|proj.{weight,bias}`,
  `encoder.layer.N.mlp.fc1|fc2.{weight,bias}`, `encoder.layernorm.{weight,bias}`.
  Also without the `encoder.` prefix (`VJEPA2Encoder.state_dict()`), and with the `vjepa2.`
  prefix of `VJEPA2ForVideoClassification`. `predictor.*`, `pooler.*`, `classifier.*` are ignored.
- Meta's original repository (`facebookresearch/vjepa2`, `checkpoint["encoder"]` or
  `checkpoint["target_encoder"]`, pass `checkpoint_key=` to pick one from the full checkpoint):
  `[module.][backbone.]patch_embed.proj`, `blocks.N.norm1|norm2`, `blocks.N.attn.qkv` (fused
  `[3D, D]`, q|k|v), `blocks.N.attn.proj`, `blocks.N.mlp.fc1|fc2`, `norm`.
  RoPE checkpoints only (V-JEPA 2): a `pos_embed` (V-JEPA 1 sin-cos models) is reported unmatched.

Any key that maps nowhere, any encoder param left without a value, or any shape mismatch raises
`ValueError` listing them. `config_from_hf` builds the matching model config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from wam_jax.models.encoder import VideoEncoder

_HF_IGNORED_PREFIXES = ("predictor.", "pooler.", "classifier.")
_HF_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")
_META_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")

# per-layer suffix (both layouts after renaming) -> our block param path
_LAYER_PARAMS = {
    "norm1.weight": ("norm1", "scale"),
    "norm1.bias": ("norm1", "bias"),
    "norm2.weight": ("norm2", "scale"),
    "norm2.bias": ("norm2", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"),
    "attn.qkv.bias": ("attn", "qkv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"),
    "attn.proj.bias": ("attn", "proj", "bias"),
    "mlp.fc1.weight": ("mlp", "fc1", "kernel"),
    "mlp.fc1.bias": ("mlp", "fc1", "bias"),
    "mlp.fc2.weight": ("mlp", "fc2", "kernel"),
    "mlp.fc2.bias": ("mlp", "fc2", "bias"),
}
_TOP_PARAMS = {
    "patch_embed.proj.weight": ("patch_embed", "kernel"),
    "patch_embed.proj.bias": ("patch_embed", "bias"),
    "norm.weight": ("norm", "scale"),
    "norm.bias": ("norm", "bias"),
}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf_config: Any, base_config: mlc.ConfigDict) -> mlc.ConfigDict:
    """Model config for a `VideoEncoder` matching an HF `VJEPA2Config` (or its `config.json` dict).

    Starts from a copy of `base_config` (a model config, e.g. `configs.base.model_config()`: it
    supplies dtype, remat, scan and attention settings) and sets the encoder fields:
    `image_size = crop_size`, `patch_size`, `tubelet = tubelet_size`, `in_channels = in_chans`,
    `pos_emb = 'rope'`, `encoder.{width, depth, heads, mlp_ratio, norm_eps, qkv_bias}`.
    """

    def get(key: str, default: Any = None) -> Any:
        if isinstance(hf_config, Mapping):
            return hf_config.get(key, default)
        return getattr(hf_config, key, default)

    c = mlc.ConfigDict(base_config.to_dict())
    patch = get("patch_size", 16)
    if isinstance(patch, list | tuple):
        if len(set(patch)) != 1:
            raise ValueError(f"VJEPA2Config.patch_size must be square, got {patch}")
        patch = patch[0]
    act = get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"VJEPA2Config.hidden_act {act!r} is not supported (the encoder uses 'gelu')"
        )
    if get("use_rope", True) is False:
        raise ValueError("VJEPA2Config.use_rope=False (learned/sin-cos pos_embed) is not supported")
    tubelet = int(get("tubelet_size", 2))
    if tubelet not in (1, 2):
        raise ValueError(f"VJEPA2Config.tubelet_size must be 1 or 2, got {tubelet}")
    c.image_size = int(get("crop_size", 256))
    c.patch_size = int(patch)
    c.tubelet = tubelet
    c.in_channels = int(get("in_chans", 3))
    c.pos_emb = "rope"
    c.encoder.width = int(get("hidden_size", 1024))
    c.encoder.depth = int(get("num_hidden_layers", 24))
    c.encoder.heads = int(get("num_attention_heads", 16))
    c.encoder.mlp_ratio = float(get("mlp_ratio", 4.0))
    c.encoder.norm_eps = float(get("layer_norm_eps", 1e-6))
    c.encoder.qkv_bias = bool(get("qkv_bias", True))
    return c


# ---------------------------------------------------------------------------------------------
# state dict
# ---------------------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, any dtype (bf16 has no NumPy equivalent)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _canonical_keys(
    state_dict: Mapping[str, Any],
) -> tuple[str, dict[str, tuple[str, Any]], list[str]]:
    """-> (layout name, {canonical key: (original key, value)}, ignored keys).

    Canonical keys follow Meta's names with per-layer `blocks.N.` and HF's split q/k/v kept as
    `blocks.N.attn.{query,key,value}.*`.
    """
    keys = list(state_dict)
    hf = any(
        re.search(r"(^|\.)(layer\.\d+\.attention\.|embeddings\.patch_embeddings\.)", k)
        for k in keys
    )
    meta = any(re.search(r"(^|\.)(blocks\.\d+\.attn\.|patch_embed\.proj\.)", k) for k in keys)
    if hf == meta:
        raise ValueError(
            "cannot tell the V-JEPA 2 state-dict layout (expected Hugging Face keys like "
            "'encoder.layer.0.attention.query.weight' or Meta keys like 'blocks.0.attn.qkv.weight'); "
            f"first keys: {keys[:8]}"
        )
    out: dict[str, tuple[str, Any]] = {}
    ignored: list[str] = []
    if hf:
        prefixed = any(k.startswith(("encoder.", "vjepa2.encoder.")) for k in keys)
        for key in keys:
            k = key.removeprefix("vjepa2.")
            if prefixed:
                if not k.startswith("encoder."):
                    if k.startswith(_HF_IGNORED_PREFIXES):
                        ignored.append(key)
                        continue
                    out[f"<unknown>{key}"] = (key, state_dict[key])
                    continue
                k = k.removeprefix("encoder.")
            m = _HF_LAYER.match(k)
            if m:
                rest = m.group(2).replace("attention.", "attn.", 1)
                k = f"blocks.{m.group(1)}.{rest}"
            elif k.startswith("embeddings.patch_embeddings."):
                k = "patch_embed." + k.removeprefix("embeddings.patch_embeddings.")
            elif k.startswith("layernorm."):
                k = "norm." + k.removeprefix("layernorm.")
            out[k] = (key, state_dict[key])
        return "huggingface", out, ignored
    for key in keys:
        k = key
        for prefix in ("module.", "backbone."):
            k = k.removeprefix(prefix)
        out[k] = (key, state_dict[key])
    return "meta", out, ignored


def _layer_arrays(
    suffix: str, value: np.ndarray, dim: int, heads: int
) -> dict[tuple[str, ...], np.ndarray] | None:
    """Maps one per-layer torch tensor to our param(s); None when the suffix is unknown."""
    hd = dim // heads
    if suffix in ("attn.qkv.weight", "attn.qkv.bias"):  # Meta's fused [3D, D] / [3D]
        if suffix.endswith("weight"):
            w = value.reshape(3, heads, hd, -1)  # [3, H, Dh, D_in]
            return {("attn", "qkv", "kernel"): np.transpose(w, (3, 0, 1, 2))}
        return {("attn", "qkv", "bias"): value.reshape(3, heads, hd)}
    m = re.fullmatch(r"attn\.(query|key|value)\.(weight|bias)", suffix)
    if m:  # HF's split projections: collected per part, fused later
        part = ("query", "key", "value").index(m.group(1))
        if m.group(2) == "weight":
            return {("attn", "qkv", "kernel", part): value.T.reshape(-1, heads, hd)}
        return {("attn", "qkv", "bias", part): value.reshape(heads, hd)}
    if suffix not in _LAYER_PARAMS:
        return None
    path = _LAYER_PARAMS[suffix]
    if suffix == "attn.proj.weight":
        return {path: value.T.reshape(heads, hd, -1)}
    if suffix.endswith(".weight") and path[-1] == "kernel":
        return {path: value.T}
    return {path: value}


def convert_state_dict(
    state_dict: Mapping[str, Any],
    encoder: VideoEncoder,
    *,
    checkpoint_key: str | None = None,
) -> nnx.State:
    """Converts a V-JEPA 2 encoder state dict into `encoder`'s param layout.

    `encoder` may be abstract (`nnx.eval_shape`): only its structure, shapes and dtypes are read.
    Returns an `nnx.State` of `nnx.Param`s (float in the encoder's param dtype) for
    `nnx.update(encoder, state)`; handles scanned (`scan_layers`) and unscanned stacks.
    `checkpoint_key` picks a sub-dict of a full Meta checkpoint (`'target_encoder'`, `'encoder'`).
    """
    if checkpoint_key is not None:
        if checkpoint_key not in state_dict:
            raise ValueError(
                f"checkpoint has no {checkpoint_key!r}; top-level keys: {sorted(state_dict)[:16]}"
            )
        state_dict = state_dict[checkpoint_key]
    nested = [k for k, v in state_dict.items() if isinstance(v, Mapping)]
    if nested:
        raise ValueError(
            f"state dict entries {nested[:8]} are dicts: this looks like a full Meta checkpoint; "
            "pass checkpoint_key='target_encoder' (or 'encoder')"
        )
    layout, canon, _ = _canonical_keys(state_dict)
    dim, heads, depth = encoder.width, encoder.heads, encoder.depth

    top: dict[tuple[str, ...], np.ndarray] = {}
    per_layer: dict[int, dict[tuple, np.ndarray]] = {}
    sources: dict[tuple, str] = {}  # our path -> original torch key (for shape errors)
    unmatched: list[str] = []
    for k, (orig, value) in canon.items():
        if k.startswith("<unknown>"):
            unmatched.append(orig)
            continue
        arr = _to_numpy(value)
        m = _META_LAYER.match(k)
        if m:
            mapped = _layer_arrays(m.group(2), arr, dim, heads)
            if mapped is None:
                unmatched.append(orig)
                continue
            layer = int(m.group(1))
            per_layer.setdefault(layer, {}).update(mapped)
            for p in mapped:
                sources[(layer, *p)] = orig
            continue
        if k in _TOP_PARAMS:
            path = _TOP_PARAMS[k]
            if k == "patch_embed.proj.weight":  # torch Conv3d [D, C, u, p, p] -> [u, p, p, C, D]
                if arr.ndim != 5:
                    raise ValueError(
                        f"{orig}: expected a Conv3d weight [D, C, tubelet, p, p], got {arr.shape}"
                    )
                arr = np.transpose(arr, (2, 3, 4, 1, 0))
            top[path] = arr
            sources[path] = orig
            continue
        unmatched.append(orig)

    # fuse HF's split q / k / v
    for layer, params in per_layer.items():
        for name in ("kernel", "bias"):
            parts = [params.pop(("attn", "qkv", name, i), None) for i in range(3)]
            present = [p is not None for p in parts]
            if all(present):
                axis = 1 if name == "kernel" else 0
                params[("attn", "qkv", name)] = np.stack(parts, axis=axis)
                sources[(layer, "attn", "qkv", name)] = sources.get(
                    (layer, "attn", "qkv", name, 0), f"layer.{layer}.attention.query/key/value"
                )
            elif any(present):
                missing = [
                    n for n, p in zip(("query", "key", "value"), present, strict=True) if not p
                ]
                raise ValueError(
                    f"layer {layer}: attention {name} lacks {missing} ({layout} layout)"
                )

    layers_found = sorted(per_layer)
    if layers_found and layers_found != list(range(len(layers_found))):
        raise ValueError(f"state dict layer indices are not contiguous from 0: {layers_found}")
    if len(layers_found) != depth:
        raise ValueError(
            f"state dict has {len(layers_found)} encoder layers, the encoder config has depth {depth}"
        )

    state = nnx.state(encoder, nnx.Param)
    scanned = encoder.blocks.scan
    missing: list[str] = []
    consumed: set[tuple] = set()
    values: dict[tuple, np.ndarray] = {}
    for path, var in nnx.to_flat_state(state):
        path = tuple(path)
        name = ".".join(map(str, path))
        if path[0] == "blocks":
            # ('blocks', 'blocks', *sub) when scanned, ('blocks', 'blocks', i, *sub) otherwise
            indices, sub = (range(depth), path[2:]) if scanned else ([int(path[2])], path[3:])
            arrays = [per_layer[i].get(sub) for i in indices]
            if any(a is None for a in arrays):
                missing.append(name)
                continue
            consumed.update((i, sub) for i in indices)
            src = sources.get((indices[0], *sub), ".".join(sub))
            arr = np.stack(arrays) if scanned else arrays[0]
        else:
            if path not in top:
                missing.append(name)
                continue
            consumed.add(path)
            src, arr = sources[path], top[path]
        want = var.get_value()  # an array, or a ShapeDtypeStruct for an abstract encoder
        if tuple(arr.shape) != tuple(want.shape):
            raise ValueError(
                f"{src}: converts to shape {tuple(arr.shape)} but encoder param {name} expects "
                f"{tuple(want.shape)} (check the encoder config)"
            )
        values[path] = jnp.asarray(arr, dtype=want.dtype)
    for layer, params in per_layer.items():
        unmatched.extend(
            sources.get((layer, *sub), f"layer {layer} {'.'.join(map(str, sub))}")
            for sub in params
            if (layer, sub) not in consumed
        )
    unmatched.extend(sources[p] for p in top if p not in consumed)
    if unmatched or missing:
        raise ValueError(
            f"V-JEPA 2 {layout} state dict does not match the encoder: "
            f"unmatched checkpoint keys {sorted(set(unmatched))}; "
            f"encoder params without a value {missing}"
        )
    flat = [(path, var.replace(values[tuple(path)])) for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)


def load_state_dict(
    encoder: VideoEncoder, state_dict: Mapping[str, Any], *, checkpoint_key: str | None = None
) -> VideoEncoder:
    """`convert_state_dict` + `nnx.update(encoder, ...)` in place; returns the encoder."""
    nnx.update(encoder, convert_state_dict(state_dict, encoder, checkpoint_key=checkpoint_key))
    return encoder


def encoder_from_state_dict(
    config: mlc.ConfigDict, state_dict: Mapping[str, Any], *, checkpoint_key: str | None = None
) -> VideoEncoder:
    """A `VideoEncoder` holding the converted weights, built without a random init (the structure
    comes from `nnx.eval_shape`), so loading a 1B encoder costs one copy of its weights."""
    abstract = nnx.eval_shape(lambda: VideoEncoder(config, rngs=nnx.Rngs(0)))
    state = convert_state_dict(state_dict, abstract, checkpoint_key=checkpoint_key)
    graphdef, _ = nnx.split(abstract)
    return nnx.merge(graphdef, state)
