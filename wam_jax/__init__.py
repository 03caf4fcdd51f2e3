"""wam_jax: latent-space World Action Models in JAX/Flax."""
