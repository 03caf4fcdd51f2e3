"""TPU's splash-attention kernel (run in Pallas's interpreter here) against the XLA path, and
which kernel `model.attention` picks on each platform."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wam_jax import sharding
from wam_jax.models import splash
from wam_jax.models.attention import Attention, head_major_attention


def _qkv(b: int = 2, length: int = 128, heads: int = 2, dh: int = 32):
    ks = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (b, length, heads, dh)) for k in ks]


def test_splash_matches_the_xla_path_forward_and_backward():
    q, k, v = _qkv()
    out = splash.splash_attention(q, k, v, interpret=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(head_major_attention(q, k, v)), atol=2e-6)

    def loss(fn, q):
        return jnp.sum(fn(q, k, v) ** 2)

    g = jax.grad(functools.partial(loss, functools.partial(splash.splash_attention, interpret=True)))(q)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(functools.partial(loss, head_major_attention))(q)),
                               atol=2e-5)


def test_splash_runs_sharded_over_batch_and_heads():
    """8 devices as data 2 x fsdp 2 x tensor 2: the kernel runs per shard under shard_map."""
    from configs import base

    cfg = base.get_config("tiny").mesh
    cfg.ici_data, cfg.ici_fsdp, cfg.ici_tensor = 2, 2, 2
    mesh = sharding.make_mesh(cfg)
    q, k, v = _qkv(b=4, heads=2)
    with jax.set_mesh(mesh):
        out = jax.jit(functools.partial(splash.splash_attention, interpret=True))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(head_major_attention(q, k, v)), atol=2e-6)


def test_the_kernel_each_platform_gets(monkeypatch, caplog):
    q, k, _ = _qkv()
    short = q[:, :64]
    mask = jnp.ones((128, 128), bool)
    assert splash.choose("auto", q, k, None) == "xla"  # this CPU
    monkeypatch.setattr(splash, "platform", lambda: "gpu")
    assert splash.choose("auto", q, k, None) is None  # jax.nn.dot_product_attention: cuDNN where it can
    monkeypatch.setattr(splash, "platform", lambda: "tpu")
    assert splash.choose("auto", q, k, None) == "splash"
    assert splash.choose("auto", q, k, mask) == "xla"
    assert splash.choose("auto", short, short, None) == "xla"
    assert splash.choose("xla", q, k, None) == "xla"
    with caplog.at_level(logging.WARNING):
        assert splash.choose("splash", short, short, None) == "xla"
    assert "64 query / 64 key tokens (not multiples of 128)" in caplog.text


def test_attention_module_on_tpu_runs_splash(monkeypatch):
    """'auto' on a TPU platform takes the splash kernel, with the module's result unchanged."""
    calls = []
    real = splash.splash_attention

    def interpreted(q, k, v):
        calls.append(q.shape)
        return real(q, k, v, interpret=True)

    attn = Attention(64, 2, rngs=nnx.Rngs(0), attention_impl="auto")
    x = jax.random.normal(jax.random.key(1), (2, 128, 64))
    reference = attn(x)  # the XLA path on this CPU
    monkeypatch.setattr(splash, "platform", lambda: "tpu")
    monkeypatch.setattr(splash, "splash_attention", interpreted)
    np.testing.assert_allclose(np.asarray(attn(x)), np.asarray(reference), atol=2e-5)
    assert calls == [(2, 128, 2, 32)]


def test_splash_is_a_known_attention_choice():
    with pytest.raises(ValueError, match="one of"):
        Attention(64, 2, rngs=nnx.Rngs(0), attention_impl="flash")


def test_the_fit_check_counts_the_fused_attention_kernels():
    from launch import compile as compile_cli

    hlo = """
  %splash_mha_fwd_residuals.7 = (f32[16,128,128]{2,1,0}) custom-call(%a, %b), custom_call_target="tpu_custom_call", x={
}}, metadata={op_name="splash_mha_fwd_residuals/pallas_call"}
  %splash_mha_dq_no_residuals = f32[2]{0} custom-call(%c), custom_call_target="tpu_custom_call"
  %dot.3 = f32[2]{0} dot(%x, %y)
  %fmha = f32[2]{0} custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"
"""
    assert compile_cli.attention_kernels(hlo) == {"splash (Pallas, TPU)": 2, "cuDNN fused attention": 1}
    assert compile_cli.attention_kernels("%dot.1 = f32[2] dot(%a, %b)") == {
        "splash (Pallas, TPU)": 0, "cuDNN fused attention": 0}
