"""The house runs one way: every import (module level or inside a function) follows the layers.

    sim  <-  data_pipelines (streaming)  <-  data_pipelines.convert
                      ^
    wam_jax.sharding <- wam_jax.models <- wam_jax.training <- wam_jax.inference <- launch

Read from the source with `ast`, so a lazy import inside a function counts as much as one at the
top. `docs/ARCHITECTURE.md` shows the same graph.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = ("sim", "data_pipelines", "wam_jax", "configs", "launch")

# Longest prefix wins. Each package may import itself and what is listed.
ALLOWED: dict[str, tuple[str, ...]] = {
    "sim": (),
    "data_pipelines": (),  # streaming: records, schema, mixture, window_index, transforms, loader
    "data_pipelines.convert": ("data_pipelines", "sim"),
    "configs": ("wam_jax.models.presets",),
    "wam_jax.sharding": (),
    "wam_jax.models": ("wam_jax.sharding",),
    "wam_jax.config_utils": ("configs",),
    "wam_jax.training": ("data_pipelines", "wam_jax.sharding", "wam_jax.models", "wam_jax.config_utils",
                         "configs"),
    "wam_jax.inference": ("data_pipelines", "wam_jax.sharding", "wam_jax.models", "wam_jax.config_utils",
                          "configs", "wam_jax.training"),
    "wam_jax": ("wam_jax.inference",),  # the package's lazy public names
    "launch": ROOTS,
}
# Streaming data must not reach into the offline converters.
FORBIDDEN = {"data_pipelines": ("data_pipelines.convert",)}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ROOTS}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _package(module: str) -> str:
    return max((p for p in ALLOWED if _within(module, p)), key=len)


def allowed(importer: str, imported: str) -> bool:
    """A package may import its own modules (not a sub-package's: that is its own layer) and what
    ALLOWED lists for it."""
    pkg = _package(importer)
    if any(_within(imported, f) for f in FORBIDDEN.get(pkg, ())):
        return False
    return _package(imported) == pkg or any(_within(imported, a) for a in ALLOWED[pkg])


def test_every_import_follows_the_layers() -> None:
    bad = [f"{path.relative_to(REPO)}: {module} imports {imported}"
           for module, path in sorted(_modules().items())
           for imported in sorted(_imports(path)) if not allowed(module, imported)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("importer,imported,ok", [
    ("wam_jax.models.encoder", "wam_jax.sharding", True),
    ("wam_jax.models.encoder", "data_pipelines.schema", False),
    ("wam_jax.training.trainer", "wam_jax.inference.evaluation", False),
    ("wam_jax.inference.load", "wam_jax.training.checkpointing", True),
    ("data_pipelines.loader", "data_pipelines.convert.oxe", False),
    ("data_pipelines.convert.pusht", "sim.pusht", True),
    ("sim.pusht", "data_pipelines.records", False),
    ("wam_jax", "wam_jax.inference.world_model_api", True),
])
def test_the_rules_themselves(importer: str, imported: str, ok: bool) -> None:
    """The checker accepts and rejects what the layer picture says (so it cannot pass vacuously)."""
    assert allowed(importer, imported) == ok
