"""Transformer layers (positions, attention, blocks, ops): RoPE layout, masks, scanned vs unscanned
stacks, remat, metadata."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wam_jax.models import attention, blocks, ops, positions

DIM, HEADS, DEPTH = 48, 4, 3  # head_dim 12 -> rope parts of 4 channels each, nothing left over


def _reference_vjepa2_rope(x: np.ndarray, pos_thw: np.ndarray) -> np.ndarray:
    """NumPy port of V-JEPA 2's `rotate_queries_or_keys` + `apply_rotary_embeddings`
    (x: [..., N, Dh], pos_thw: [N, 3])."""

    def rotate(v, pos):
        d = v.shape[-1]
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        freq = pos[:, None] * omega
        sin = np.tile(np.sin(freq), (1, 2))
        cos = np.tile(np.cos(freq), (1, 2))
        y = np.stack([-v[..., 1::2], v[..., 0::2]], axis=-1).reshape(v.shape)
        return v * cos + y * sin

    dh = x.shape[-1]
    part = 2 * ((dh // 3) // 2)
    out, s = [], 0
    for axis in range(3):
        out.append(rotate(x[..., s : s + part], pos_thw[:, axis].astype(np.float64)))
        s += part
    out.append(x[..., s:])
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize("head_dim", [12, 16, 64, 88])
def test_rope_vjepa2_layout_matches_reference(head_dim):
    pos = np.asarray(positions.grid_positions(2, 3, 4))
    x = np.random.default_rng(0).normal(size=(2, pos.shape[0], 3, head_dim)).astype(np.float32)
    got = positions.apply_rope(jnp.asarray(x), positions.rope_3d(jnp.asarray(pos), head_dim))
    # reference works on [..., N, Dh]: move heads before tokens
    want = _reference_vjepa2_rope(x.transpose(0, 2, 1, 3), pos).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    if head_dim % 6:  # channels past the three parts are untouched
        rest = 3 * positions.rope_part_dim(head_dim)
        np.testing.assert_array_equal(np.asarray(got)[..., rest:], x[..., rest:])


def test_rope_identity_at_origin_and_batched_tables():
    x = jax.random.normal(jax.random.key(0), (2, 5, HEADS, DIM // HEADS))
    zeros = jnp.zeros((5, 3))
    np.testing.assert_allclose(
        positions.apply_rope(x, positions.rope_3d(zeros, DIM // HEADS)), x, atol=1e-7
    )
    # per-example tables [B, L, Dh] equal shared tables [L, Dh] when the positions agree
    pos = positions.grid_positions(1, 1, 5).astype(jnp.float32)
    shared = positions.apply_rope(x, positions.rope_3d(pos, DIM // HEADS))
    batched = positions.apply_rope(x, positions.rope_3d(jnp.stack([pos, pos]), DIM // HEADS))
    np.testing.assert_allclose(shared, batched, atol=1e-7)


def test_rope_rotary_layout_is_a_relative_rotation():
    dh = 24
    key_q, key_k = jax.random.split(jax.random.key(1))
    q = jax.random.normal(key_q, (1, 1, 1, dh))
    k = jax.random.normal(key_k, (1, 1, 1, dh))

    def rot(v, p):
        return positions.apply_rope(
            v, positions.rope_3d(jnp.asarray([p], jnp.float32), dh, layout="rotary")
        )

    m, n, shift = (1.0, 2.0, 3.0), (4.0, 0.0, 5.0), (7.0, -3.0, 2.0)
    np.testing.assert_allclose(jnp.linalg.norm(rot(q, m)), jnp.linalg.norm(q), rtol=1e-5)
    dot = jnp.vdot(rot(q, m), rot(k, n))
    shifted = jnp.vdot(
        rot(q, tuple(a + s for a, s in zip(m, shift, strict=True))),
        rot(k, tuple(a + s for a, s in zip(n, shift, strict=True))),
    )
    np.testing.assert_allclose(dot, shifted, rtol=1e-4, atol=1e-4)


def test_rope_vjepa2_layout_is_not_an_exact_rotation():
    # Pins the V-JEPA 2 quirk (tiled frequencies, paired channels): a "fix" would break checkpoints.
    dh = 24
    q = jax.random.normal(jax.random.key(2), (1, 1, 1, dh))
    table = positions.rope_3d(jnp.asarray([[3.0, 1.0, 2.0]]), dh)
    assert abs(float(jnp.linalg.norm(positions.apply_rope(q, table)) - jnp.linalg.norm(q))) > 1e-3


def test_rope_and_sincos_validate_positions():
    with pytest.raises(ValueError, match=r"\[\.\.\., L, 3\]"):
        positions.rope_3d(jnp.zeros((4, 2)), 12)
    with pytest.raises(ValueError, match="layout"):
        positions.rope_3d(jnp.zeros((4, 3)), 12, layout="interleaved")
    with pytest.raises(ValueError, match=r"\[\.\.\., L, 3\]"):
        positions.sincos_3d(jnp.zeros((4, 2)), 16)


def test_sincos_3d_values():
    pos = positions.grid_positions(2, 2, 2)
    emb = positions.sincos_3d(pos, 32)
    assert emb.shape == (8, 32)
    # token 0 sits at the origin: every sin channel 0, every cos channel 1
    t_part = [0.0] * 8 + [1.0] * 8  # t: half of 32 channels, [sin | cos]
    hw_part = [0.0] * 4 + [1.0] * 4  # h and w: a quarter each
    np.testing.assert_allclose(emb[0], t_part + hw_part + hw_part, atol=1e-7)
    # distinct positions get distinct embeddings
    assert len({tuple(np.round(np.asarray(e), 5)) for e in emb}) == 8
    assert positions.sincos_3d(pos, 36).shape == (8, 36)  # leftover channels are zero-padded


def _stack(scan: bool, remat: str = "none", unroll: int = 1) -> blocks.BlockStack:
    return blocks.BlockStack(DEPTH, DIM, HEADS, 4.0, rngs=nnx.Rngs(0), scan=scan, remat=remat,
                             scan_unroll=unroll)


def _scanned_copy_of(unscanned: blocks.BlockStack, remat: str = "none", unroll: int = 1
                     ) -> blocks.BlockStack:
    scanned = _stack(True, remat, unroll)
    per_layer = [nnx.state(b, nnx.Param) for b in unscanned.blocks]
    blocks.load_params(scanned.blocks, blocks.list_to_stacked(per_layer))
    return scanned


def test_scan_matches_unscanned_with_mask_and_rope():
    unscanned = _stack(False)
    scanned = _scanned_copy_of(unscanned)
    # the scanned init differs (different rng streams), so equality below comes from the copy
    x = jax.random.normal(jax.random.key(3), (2, 8, DIM))
    pos = positions.grid_positions(2, 2, 2)
    rope = positions.rope_3d(pos, DIM // HEADS)
    mask = pos[:, 0][None, :] <= pos[:, 0][:, None]  # frame-causal [L, L]
    want = unscanned(x, mask=mask, rope=rope)
    got = scanned(x, mask=mask, rope=rope)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the split back gives the original per-layer params
    back = blocks.stacked_to_list(nnx.state(scanned.blocks, nnx.Param), DEPTH)
    for b, s in zip(unscanned.blocks, back, strict=True):
        want_leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(b, nnx.Param)))
        for a, c in zip(want_leaves, jax.tree.leaves(s), strict=True):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("unroll", [0, 2])
def test_scan_unroll_keeps_values_grads_and_cache(unroll):
    """scan_unroll changes the compiled loop only: the same outputs, gradients and KV-cache
    rollouts as the unscanned stack; 0 leaves no loop in the program, 2 (of 3 layers) keeps one."""
    unscanned = _stack(False)
    rolled, unrolled = _scanned_copy_of(unscanned), _scanned_copy_of(unscanned, unroll=unroll)
    x = jax.random.normal(jax.random.key(6), (2, 8, DIM))
    pos = positions.grid_positions(2, 2, 2)
    rope = positions.rope_3d(pos, DIM // HEADS)
    mask = pos[:, 0][None, :] <= pos[:, 0][:, None]

    def loss(m, x):
        return jnp.sum(m(x, mask=mask, rope=rope) ** 2)

    l0, g0 = nnx.value_and_grad(loss)(unscanned, x)
    l1, g1 = nnx.value_and_grad(loss)(unrolled, x)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    want = blocks.list_to_stacked([nnx.to_pure_dict(b) for b in g0.blocks.values()])
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(g1.blocks)), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    y0, c0 = unscanned.with_cache(x[:, :4], rope=(rope[0][:4], rope[1][:4]))
    y1, c1 = unrolled.with_cache(x[:, :4], rope=(rope[0][:4], rope[1][:4]))
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(c1, c0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def hlo(m):
        graph, state = nnx.split(m)
        return jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, x).as_text()

    assert "while" in hlo(rolled)
    assert ("while" in hlo(unrolled)) == (unroll != 0)


def test_scan_unroll_is_validated():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="scan_unroll"):
            _stack(True, unroll=bad)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_values_and_grads(remat):
    base = _stack(False)
    plain, rematted = _scanned_copy_of(base), _scanned_copy_of(base, remat)
    x = jax.random.normal(jax.random.key(4), (2, 6, DIM))

    def loss(m, x):
        return jnp.sum(m(x) ** 2)

    (l0, g0), (l1, g1) = (nnx.jit(nnx.value_and_grad(loss))(m, x) for m in (plain, rematted))
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mask_semantics():
    attn = attention.Attention(DIM, HEADS, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (2, 6, DIM))
    # all-True mask == no mask
    np.testing.assert_allclose(attn(x, mask=jnp.ones((6, 6), bool)), attn(x), rtol=1e-6, atol=1e-6)
    # causal mask: the first k outputs never see tokens past k
    causal = jnp.tril(jnp.ones((6, 6), bool))
    full = attn(x, mask=causal)
    np.testing.assert_allclose(
        full[:, :4], attn(x[:, :4], mask=causal[:4, :4]), rtol=1e-5, atol=1e-5
    )
    # key padding per example [B, 1, 1, L]: masked-out tokens cannot change other outputs
    keep = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    pad_mask = keep[:, None, None, :]
    y = attn(x, mask=pad_mask)
    x2 = jnp.where(keep[..., None], x, 100.0)
    y2 = attn(x2, mask=pad_mask)
    np.testing.assert_allclose(
        jnp.where(keep[..., None], y, 0), jnp.where(keep[..., None], y2, 0), rtol=1e-5, atol=1e-5
    )
    # True means "may attend": blocking everything but self makes attention a per-token map
    eye = jnp.eye(6, dtype=bool)
    y_eye = attn(x, mask=eye)
    single = jnp.concatenate([attn(x[:, i : i + 1]) for i in range(6)], axis=1)
    np.testing.assert_allclose(y_eye, single, rtol=1e-5, atol=1e-5)
    # [B, L, L] masks apply to every head
    per_example = jnp.stack([causal, eye])
    np.testing.assert_allclose(attn(x, mask=per_example)[0], full[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(attn(x, mask=per_example)[1], y_eye[1], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bool"):
        attn(x, mask=jnp.ones((6, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"\[L, L\], \[B, L, L\]"):
        attn(x, mask=jnp.ones((6,), bool))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "LL", "BL1L", "B1LL", "BHLL", "cross"])
def test_head_major_attention_matches_jax(mask_kind, dtype):
    """The CPU attention layout computes what `jax.nn.dot_product_attention('xla')` does,
    forward and backward, for every mask form `Attention` accepts (and Lq != Lk, the cache)."""
    b, lq, h, d = 2, 7, 3, 16
    lk = 9 if mask_kind == "cross" else lq
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (b, lq, h, d), dtype)
    k = jax.random.normal(ks[1], (b, lk, h, d), dtype)
    v = jax.random.normal(ks[2], (b, lk, h, d), dtype)
    g = jax.random.normal(ks[3], (b, lq, h, d), dtype)
    rand = jax.random.bernoulli(ks[4], 0.6, (b, h, lq, lk)).at[..., 0].set(True)  # no empty row
    mask = {"none": None, "LL": rand[0, 0], "BL1L": rand[:, :1, :1, :],
            "B1LL": rand[:, :1], "BHLL": rand, "cross": rand[:, :1]}[mask_kind]

    def ref(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")

    def ours(q, k, v):
        return attention.head_major_attention(q, k, v, mask)

    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    y_ref, vjp_ref = jax.vjp(ref, q, k, v)
    y, vjp = jax.vjp(ours, q, k, v)
    assert y.shape == (b, lq, h, d) and y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=tol, atol=tol)
    for a, r in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r, np.float32), rtol=tol,
                                   atol=tol * 4)


def test_attention_impls_agree():
    """'xla' (head-major) and 'auto' on CPU give JAX's attention through the whole module."""
    x = jax.random.normal(jax.random.key(2), (2, 6, DIM))
    causal = jnp.tril(jnp.ones((6, 6), bool))
    outs = {}
    for impl in ("xla", "auto"):
        attn = attention.Attention(DIM, HEADS, rngs=nnx.Rngs(0), attention_impl=impl)
        outs[impl] = attn(x, mask=causal)
    q, k, v = attn._qkv(x, None)
    ref = attn.proj(jax.nn.dot_product_attention(q, k, v, mask=causal, implementation="xla"))
    for impl, y in outs.items():
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=impl)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_is_exact_gelu(dtype):
    """`ops.gelu` (erf form) is `jax.nn.gelu(approximate=False)` (erfc form), values and
    gradients, far into both tails; bfloat16 in gives bfloat16 out, rounded from float32."""
    x32 = jnp.concatenate([jnp.linspace(-12.0, 12.0, 4001), jnp.array([0.0, -0.0, 1e-6, -40.0, 40.0])])
    x = x32.astype(dtype)
    y, vjp = jax.vjp(ops.gelu, x)
    y_ref, vjp_ref = jax.vjp(lambda x: jax.nn.gelu(x, approximate=False), x.astype(jnp.float32))
    assert y.dtype == dtype
    ones = jnp.ones_like(x)
    if dtype == jnp.float32:
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=2e-6)
        np.testing.assert_allclose(vjp(ones)[0], vjp_ref(ones)[0], rtol=1e-6, atol=2e-6)
    else:  # float32 math, one bfloat16 rounding of the result (bf16 eps 2^-8)
        np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=2**-8, atol=2e-6)
        np.testing.assert_allclose(np.asarray(vjp(ones)[0], np.float32), vjp_ref(ones.astype(jnp.float32))[0],
                                   rtol=2**-8, atol=2e-6)
    # Not the tanh approximation: it differs from exact GELU by up to ~5e-4 near |x| = 2.
    approx = jax.nn.gelu(x32, approximate=True)
    assert float(jnp.max(jnp.abs(ops.gelu(x32) - approx))) > 1e-4


def test_every_param_has_logical_axes():
    allowed = {"embed", "mlp", "heads", "kv", "qkv", "layers", "norm"}
    for scan in (True, False):
        for path, var in nnx.to_flat_state(nnx.state(_stack(scan), nnx.Param)):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var[...].ndim, (path, names)
            assert set(names) <= allowed, (path, names)
            if scan:
                assert names[0] == "layers", path


def test_bad_arguments():
    with pytest.raises(ValueError, match="remat"):
        blocks.BlockStack(1, DIM, HEADS, 4.0, rngs=nnx.Rngs(0), remat="some")
    with pytest.raises(ValueError, match="attention implementation"):
        attention.Attention(DIM, HEADS, rngs=nnx.Rngs(0), attention_impl="flash")
    with pytest.raises(ValueError, match="multiple of heads"):
        attention.Attention(50, HEADS, rngs=nnx.Rngs(0))
    attn = attention.Attention(DIM, HEADS, rngs=nnx.Rngs(0))
    bad_rope = positions.rope_3d(jnp.zeros((5, 3)), DIM // HEADS)
    with pytest.raises(ValueError, match="rope tables"):
        attn(jnp.zeros((1, 6, DIM)), rope=bad_rope)


def test_bf16_compute_keeps_f32_params():
    stack = blocks.BlockStack(
        2, DIM, HEADS, 4.0, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32
    )
    y = stack(jnp.ones((1, 4, DIM), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert {v[...].dtype for _, v in nnx.to_flat_state(nnx.state(stack, nnx.Param))} == {
        jnp.dtype("float32")
    }
