"""Transformer blocks: MLP, pre-norm block, and the block stack (scanned over layers, KV cache).

The block is V-JEPA 2's (pre-norm, qkv bias, exact-erf GELU MLP, LayerNorm eps 1e-6) so that Meta's
checkpoints convert one-to-one (see `vjepa2_convert.py`). Every parameter carries logical axis
names (`wam_jax.sharding` maps them to mesh axes); activations are constrained to `ACT_AXES`
at block boundaries. The stack scans over layers (one compiled block, parameters stacked on a
leading `'layers'` axis) and rematerializes per block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wam_jax import sharding
from wam_jax.models.attention import Attention, KVCache
from wam_jax.models.ops import gelu
from wam_jax.models.partitioning import ACT_AXES, mesh_optional, normal_init, ones_init, zeros_init
from wam_jax.models.positions import Rope

REMAT_POLICIES = ("none", "full", "dots")


class Mlp(nnx.Module):
    """`fc2(gelu(fc1(x)))` with exact (erf) GELU, as in V-JEPA 2; hidden = `int(dim * mlp_ratio)`."""

    @mesh_optional
    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        hidden: int | None = None,
    ):
        hidden = int(dim * mlp_ratio) if hidden is None else hidden
        self.fc1 = nnx.Linear(
            dim,
            hidden,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=normal_init(("embed", "mlp")),
            bias_init=zeros_init(("mlp",)),
            rngs=rngs,
        )
        self.fc2 = nnx.Linear(
            hidden,
            dim,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=normal_init(("mlp", "embed")),
            bias_init=zeros_init(("embed",)),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


def layer_norm(
    dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32
) -> nnx.LayerNorm:
    """LayerNorm with replicated (`'norm'`) scale and bias."""
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=ones_init(("norm",)),
        bias_init=zeros_init(("norm",)),
        rngs=rngs,
    )


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


class Block(nnx.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.

    `adaln=True` (DiT's AdaLN-zero, LeWM's action conditioning): a per-token conditioning vector
    `cond` `[B, L, dim]` sets a shift, scale and gate for each branch,
    `x + gate1 * attn(norm1(x) * (1 + scale1) + shift1)` (likewise the MLP); the modulation map
    starts at zero, so the block starts as the identity and the condition enters every layer.
    """

    @mesh_optional
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attention_impl: str = "xla",
        norm_eps: float = 1e-6,
        adaln: bool = False,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layer_norm(dim, rngs=rngs, eps=norm_eps, **kw)
        self.attn = Attention(
            dim, heads, rngs=rngs, qkv_bias=qkv_bias, attention_impl=attention_impl, **kw
        )
        self.norm2 = layer_norm(dim, rngs=rngs, eps=norm_eps, **kw)
        self.mlp = Mlp(dim, mlp_ratio, rngs=rngs, **kw)
        self.ada: nnx.Linear | None = nnx.data(nnx.Linear(
            dim, 6 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            kernel_init=zeros_init(("embed", "mlp")), bias_init=zeros_init(("mlp",)),
        ) if adaln else None)

    def _modulation(self, cond: jax.Array | None) -> tuple[jax.Array, ...] | None:
        if self.ada is None:
            if cond is not None:
                raise ValueError("Block: 'cond' given to a block built without adaln")
            return None
        if cond is None:
            raise ValueError("Block: an adaln block needs 'cond' [B, L, dim]")
        return tuple(jnp.split(self.ada(jax.nn.silu(cond)), 6, axis=-1))

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        rope: Rope | None = None,
        cond: jax.Array | None = None,
    ) -> jax.Array:
        return self.with_cache(x, rope=rope, mask=mask, cond=cond, use_cache=False)[0]

    def with_cache(self, x: jax.Array, *, rope: Rope | None = None,
                   cache: KVCache | None = None, mask: jax.Array | None = None,
                   cond: jax.Array | None = None, use_cache: bool = True
                   ) -> tuple[jax.Array, KVCache | None]:
        """`__call__` for new tokens attending over a key/value cache (see `Attention.with_cache`);
        `use_cache=False` is the plain block (no cache returned)."""
        x = sharding.constrain(x, ACT_AXES)
        mod = self._modulation(cond)
        h = self.norm1(x)
        if mod is not None:
            h = modulate(h, mod[0], mod[1])
        if use_cache:
            a, cache = self.attn.with_cache(h, rope=rope, cache=cache, mask=mask)
        else:
            a = self.attn(h, mask=mask, rope=rope)
        x = x + (a if mod is None else mod[2] * a)
        h = self.norm2(x)
        m = self.mlp(h if mod is None else modulate(h, mod[3], mod[4]))
        x = x + (m if mod is None else mod[5] * m)
        return sharding.constrain(x, ACT_AXES), cache


def remat_policy(name: str):
    """'none' -> no remat; 'full' -> save nothing (recompute the block); 'dots' -> save matmul
    outputs without batch dims (projections / MLP), recompute attention and elementwise ops."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {name!r}")
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return None


class BlockStack(nnx.Module):
    """`depth` Blocks.

    scan=True: parameters stacked on a leading `'layers'` axis (created with `nnx.vmap`, run with
    `nnx.scan`) so the block compiles once whatever the depth; scan=False: an `nnx.List` of blocks
    (`blocks[i]`), same math. `remat` ('none' | 'full' | 'dots') applies per block.
    `scan_unroll` (scanned stacks only, JAX's `scan(unroll=)`): 1 runs one block per loop
    iteration; k runs k; 0 unrolls the whole stack, which keeps the stacked parameter layout
    (checkpoints, sharding) but compiles and runs like scan=False: no loop, no per-iteration
    stacking of saved activations, longer compiles (BENCHMARKS.md §8).
    `stacked_to_list` / `list_to_stacked` convert parameter states between the two layouts.
    """

    @mesh_optional
    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        rngs: nnx.Rngs,
        scan: bool = True,
        scan_unroll: int = 1,
        remat: str = "none",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        qkv_bias: bool = True,
        attention_impl: str = "xla",
        norm_eps: float = 1e-6,
        adaln: bool = False,
    ):
        if depth < 1:
            raise ValueError(f"BlockStack depth must be >= 1, got {depth}")
        remat_policy(remat)  # validate early
        if isinstance(scan_unroll, bool) or int(scan_unroll) != scan_unroll or scan_unroll < 0:
            raise ValueError(
                f"model.scan_unroll must be an int >= 0 (0: unroll every layer), got {scan_unroll!r}"
            )
        self.depth = depth
        self.scan = scan
        self.scan_unroll = int(scan_unroll)
        self.remat = remat

        def make(r: nnx.Rngs) -> Block:
            return Block(
                dim,
                heads,
                mlp_ratio,
                rngs=r,
                qkv_bias=qkv_bias,
                dtype=dtype,
                param_dtype=param_dtype,
                attention_impl=attention_impl,
                norm_eps=norm_eps,
                adaln=adaln,
            )

        if scan:

            @nnx.split_rngs(splits=depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_stacked(r: nnx.Rngs) -> Block:
                return make(r)

            self.blocks = make_stacked(rngs)
        else:
            self.blocks = nnx.List([make(rngs) for _ in range(depth)])

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        rope: Rope | None = None,
        cond: jax.Array | None = None,
    ) -> jax.Array:
        """`cond`: the per-token conditioning of AdaLN blocks (`adaln=True`), else None."""

        def apply(block: Block, h: jax.Array) -> jax.Array:
            return block(h, mask=mask, rope=rope, cond=cond)

        if self.remat != "none":
            apply = nnx.remat(apply, policy=remat_policy(self.remat), prevent_cse=not self.scan)

        if not self.scan:
            for block in self.blocks:
                x = apply(block, x)
            return x

        @nnx.scan(
            in_axes=(nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
            unroll=self.scan_unroll,
        )
        def run(h: jax.Array, block: Block) -> jax.Array:
            return apply(block, h)

        return run(x, self.blocks)

    def with_cache(self, x: jax.Array, *, rope: Rope | None = None,
                   cache: KVCache | None = None, mask: jax.Array | None = None,
                   cond: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Inference over new tokens with per-layer key/value caches.

        `cache`: None (the first call: x is the whole prefix) or the previous call's cache,
        keys/values stacked over layers `[depth, B, L, heads, head_dim]`. Returns the outputs and
        the cache extended by x's tokens. No remat: this path is for rollouts, not gradients."""
        if not self.scan:
            new_k, new_v = [], []
            for i, block in enumerate(self.blocks):
                layer = None if cache is None else (cache[0][i], cache[1][i])
                x, (k, v) = block.with_cache(x, rope=rope, cache=layer, mask=mask, cond=cond)
                new_k.append(k)
                new_v.append(v)
            return x, (jnp.stack(new_k), jnp.stack(new_v))

        if cache is None:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0),
                      transform_metadata={nnx.PARTITION_NAME: "layers"}, unroll=self.scan_unroll)
            def prefill(h: jax.Array, block: Block) -> tuple[jax.Array, KVCache]:
                return block.with_cache(h, rope=rope, mask=mask, cond=cond)

            return prefill(x, self.blocks)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"}, unroll=self.scan_unroll)
        def extend(h: jax.Array, block: Block, layer: KVCache) -> tuple[jax.Array, KVCache]:
            return block.with_cache(h, rope=rope, cache=layer, mask=mask, cond=cond)

        return extend(x, self.blocks, cache)


def stacked_to_list(state: nnx.State | dict, depth: int) -> list[dict]:
    """Splits a scanned stack's block params (leading `layers` axis) into per-layer pure dicts."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    return [jax.tree.map(lambda a, i=i: a[i], pure) for i in range(depth)]


def list_to_stacked(states: list[nnx.State | dict]) -> dict:
    """Stacks per-layer block params on a new leading axis: the scanned layout, as a pure dict."""
    pures = [nnx.to_pure_dict(s) if isinstance(s, nnx.State) else s for s in states]
    return jax.tree.map(lambda *a: jnp.stack(a), *pures)


def load_params(module: nnx.Module, pure: dict) -> None:
    """Writes a pure dict of arrays (as `nnx.to_pure_dict` gives) into `module`'s params in place,
    keeping each variable's metadata (logical axes). Fails on keys the module does not have."""
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
