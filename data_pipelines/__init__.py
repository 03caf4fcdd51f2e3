"""Data pipelines: converters into the wam_jax episode format, and Grain streaming out of it."""
