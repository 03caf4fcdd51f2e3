"""The attention kernel per platform, and TPU's Pallas splash-attention kernel.

`model.attention='auto'` (the default) runs, on TPU, JAX's Pallas splash-attention kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`: blockwise, the L x L scores never reach HBM)
for unmasked attention over lengths that are multiples of its 128-token blocks; on GPU,
`jax.nn.dot_product_attention` (cuDNN's fused kernel where it applies); elsewhere, and for what
splash does not take (masks, other lengths), the head-major XLA path (`attention.py`). The
platform is that of the devices the program is compiled for (the mesh's, so an ahead-of-time
compile for a TPU topology on a CPU host chooses as a TPU run would). Splash is a custom call
that GSPMD cannot partition, so it runs under `shard_map`, batch and heads split as the logical
rules split them.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from wam_jax import sharding

log = logging.getLogger(__name__)

SPLASH_BLOCK = 128  # the kernel's default query / key block: lengths must be multiples of it


def platform() -> str:
    """'tpu' | 'gpu' | 'cpu': the platform of the mesh set with `jax.set_mesh` (its abstract
    device, known inside `jit`), else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return str(device.platform) if device is not None else jax.default_backend()


def splash_unsupported(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> str | None:
    """Why splash cannot run this attention, or None if it can."""
    if mask is not None:
        return "a mask (splash needs a static one)"
    if q.shape[1] % SPLASH_BLOCK or k.shape[1] % SPLASH_BLOCK:
        return f"{q.shape[1]} query / {k.shape[1]} key tokens (not multiples of {SPLASH_BLOCK})"
    return None


@functools.cache
def _note_fallback(requested: str, reason: str) -> None:
    log.warning("attention '%s': %s; this attention runs the XLA path instead", requested, reason)


def choose(requested: str, q: jax.Array, k: jax.Array, mask: jax.Array | None) -> str | None:
    """The implementation to run: 'splash', 'xla', or None (`jax.nn.dot_product_attention`'s own
    choice, cuDNN where it applies). 'splash' asked for where it cannot run falls back to 'xla'
    with a warning (once per reason)."""
    p = platform()
    if requested == "auto":
        if p == "tpu":
            return "splash" if splash_unsupported(q, k, mask) is None else "xla"
        return None if p == "gpu" else "xla"
    if requested == "splash":
        reason = splash_unsupported(q, k, mask)
        if reason is None and p != "tpu":
            reason = f"the {p} platform (a TPU kernel)"
        if reason is not None:
            _note_fallback(requested, reason)
            return "xla"
    return requested


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Unmasked softmax attention `[B, L, heads, Dh]` in and out (scale `Dh**-0.5`), by the splash
    kernel. `interpret=True` runs the kernel in Pallas's interpreter (any platform; tests)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    scale = q.shape[-1] ** -0.5

    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        _, lq, heads, _ = q.shape  # this shard's heads
        mask = masks.MultiHeadMask([masks.FullMask((lq, k.shape[1])) for _ in range(heads)])
        kernel = kernels.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
        out = jax.vmap(kernel)(jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2),
                               jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
        return jnp.swapaxes(out, 1, 2).astype(v.dtype)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return local(q, k, v)
    spec = sharding.spec_for(q.shape, ("batch", None, "heads", None), mesh)
    return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
