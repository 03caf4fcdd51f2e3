"""Seeded fuzzing of malformed inputs: converter inputs, `--config.*` overrides, WorldModel arguments.

Why: a broken download, a mistyped flag or a wrong array must end in one clear error that names the
file, field, flag or argument (or in a skip counted in the manifest), never in a traceback from
inside TFDS, FFmpeg, numpy or XLA, a hang, or silently NaN output. Cases are drawn from
`numpy.random.default_rng(seed)`; every failure is reported with its seed and mutation, so it
reproduces exactly.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from launch import convert as cli

# Skip reasons the converters document (and count in manifest.json).
OXE_REASONS = {"empty_episode", "too_short", "corrupt_image", "corrupt_record", "non_finite", "bad_episode"}
EGO4D_REASONS = {"missing_video", "truncated_video", "corrupt_video", "decode_error", "empty_video",
                 "no_video_stream", "fps_below_target", "too_short"}
RETYPED = ("abc", 7, [1, 2], None, {"x": 1}, -1, "", 1.5)


# ------------------------------------------------------------------------------------------------
# Helpers: JSON and byte mutations, the CLI run


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_json_paths(v, prefix + (k,)))
    return out


def _at(node: Any, path: tuple) -> Any:
    for k in path:
        node = node[k]
    return node


def mutate_json(path: str, kind: str, rng: np.random.Generator) -> tuple[str, str | None]:
    """Deletes a key, changes a value's type or truncates the text of the JSON file at `path`.

    Returns (description, the name of the field touched: the key, or the list's key).
    """
    text = open(path).read()
    if kind == "truncate":
        cut = int(rng.integers(len(text)))
        with open(path, "w") as f:
            f.write(text[:cut])
        return f"truncated at byte {cut}/{len(text)}", None
    obj = json.loads(text)
    paths = _json_paths(obj)
    if kind == "delete":
        paths = [p for p in paths if isinstance(p[-1], str)]
    if rng.random() < 0.5:  # half the time a structural target: an object / list, or a list element
        structural = [p for p in paths if isinstance(p[-1], int) or isinstance(_at(obj, p), dict | list)]
        paths = structural or paths
    where = paths[int(rng.integers(len(paths)))]
    node = _at(obj, where[:-1])
    if kind == "delete":
        del node[where[-1]]
        what = "deleted"
    else:
        old = node[where[-1]]
        choices = [v for v in RETYPED if type(v) is not type(old)]
        node[where[-1]] = choices[int(rng.integers(len(choices)))]
        what = f"{type(old).__name__} -> {node[where[-1]]!r}"
    with open(path, "w") as f:
        json.dump(obj, f)
    field = next((k for k in reversed(where) if isinstance(k, str)), None)
    return f"{kind} {list(where)} ({what})", field


def mutate_bytes(path: str, kind: str, rng: np.random.Generator) -> str:
    """Truncates, bit-flips, randomizes or empties the file at `path`."""
    data = bytearray(open(path, "rb").read())
    if kind == "truncate":
        data = data[: int(rng.integers(len(data)))]
        desc = f"truncated to {len(data)} bytes"
    elif kind == "flip":
        # a third of the cases hit the first record / box header, where lengths live
        hi = 12 if rng.random() < 1 / 3 else len(data)
        idx = sorted(int(i) for i in rng.integers(hi, size=int(rng.integers(1, 8))))
        for i in idx:
            data[i] ^= int(rng.integers(1, 256))
        desc = f"bytes {idx} flipped"
    elif kind == "random":
        data = bytearray(rng.integers(0, 256, int(rng.integers(1, 8192)), dtype=np.uint8).tobytes())
        desc = f"replaced by {len(data)} random bytes"
    else:
        data = bytearray()
        desc = "replaced by an empty file"
    with open(path, "wb") as f:
        f.write(bytes(data))
    return desc


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`wam-convert ARGV` in process: (exit status, what it wrote to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.run(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


def check_cli_outcome(argv: list[str], out: str, names: list[str], reasons: set[str]) -> tuple[str, dict | None]:
    """Runs the converter; asserts a clean exit-2 line naming one of `names`, or success with every
    source item either converted or skipped with a documented reason. Returns (outcome, manifest)."""
    code, err = run_cli(argv)
    if code == 2:
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("wam-convert: error: "), err
        assert any(n in last for n in names), f"error names none of {names}: {last}"
        return "clear error", None
    assert code == 0, f"exit status {code}: {err}"
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert set(manifest["skipped_by_reason"]) <= reasons, manifest["skipped_by_reason"]
    assert sum(manifest["skipped_by_reason"].values()) == manifest["num_skipped"] == len(manifest["skipped"])
    return ("converted, skips counted" if manifest["num_skipped"] else "converted"), manifest


def run_cases(cases: list[tuple[str, Callable[[], str]]]) -> collections.Counter:
    """Runs every case, collecting failures (seed + mutation + error) instead of stopping at the first."""
    outcomes: collections.Counter = collections.Counter()
    failures = []
    for desc, case in cases:
        try:
            outcomes[case()] += 1
        except Exception as e:  # noqa: BLE001 - every unexpected exception is a finding to report
            failures.append(f"{desc}: {type(e).__name__}: {str(e)[:400]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    return outcomes


def run_converter_cases(label: str, cases: list[tuple[str, Callable[[], str]]], descs: dict[int, str]) -> None:
    """`run_cases`, then the mutation of every seed (also on failure) and the outcome counts."""
    try:
        outcomes = run_cases(cases)
    finally:
        print("\n".join(f"  {label} seed {s}: {d}" for s, d in sorted(descs.items())))
    print(f"{label} converter fuzz: {len(cases)} cases: {dict(outcomes)}")


# ------------------------------------------------------------------------------------------------
# 1. Converter inputs


@pytest.fixture(scope="module")
def rlds_base(tmp_path_factory) -> str:
    from tests.rlds_fixtures import make_fixture

    fx = make_fixture(str(tmp_path_factory.mktemp("rlds_base")), "bridge", num_episodes=4, length=3,
                      num_shards=2, image_hw=(16, 16))
    return fx.path


@pytest.fixture(scope="module")
def ego4d_base(tmp_path_factory) -> str:
    from data_pipelines.convert import ego4d_writer as w

    root = str(tmp_path_factory.mktemp("ego4d_base"))
    writer = w.Ego4DLayoutWriter(root)
    writer.add_video("vid-a", w.moving_shapes(24, 48, 64, fps=10, seed=1), 10.0, split="train",
                     narrations=((0.5, "#C C opens the drawer"), (1.5, "#C C closes it")))
    writer.add_video("vid-b", w.moving_shapes(24, 48, 64, fps=10, seed=2), 10.0, codec="vp9", split="val")
    writer.add_video("vid-c", w.moving_shapes(24, 48, 64, fps=10, seed=3), 10.0, split="test",
                     narrations=((1.0, "#C C looks around"),))
    writer.add_clip("clip-a", "vid-a", w.moving_shapes(15, 48, 64, fps=10, seed=4), 10.0, video_start_sec=0.5)
    writer.finish()
    return root


# First seeds, picked so that the cases include the bugs this fuzzing found (they stay regression
# tests): a flipped tfrecord length field, a deleted top-level `name` in dataset_info.json, mistyped
# features.json entries; a mistyped `scenarios` list and a non-object narration in the Ego4D files.
OXE_SEED0, EGO4D_SEED0 = 3, 1407
OXE_KINDS = ("json:delete", "json:retype", "json:truncate", "shard:truncate", "shard:flip")


@pytest.mark.timeout(300, method="thread")  # a hang inside FFmpeg / TFDS: stacks, then exit
def test_oxe_converter_on_mutated_builder_dirs(rlds_base, tmp_path):
    """features.json / dataset_info.json with a key deleted, a value of another type or cut text,
    and tfrecord shards cut or bit-flipped: each run ends in `wam-convert: error:` naming the file or
    field (exit 2), or converts with every episode converted or skipped with a counted reason."""

    def case(seed: int) -> tuple[str, Callable[[], str]]:
        def run() -> str:
            rng = np.random.default_rng(OXE_SEED0 + seed)
            kind = OXE_KINDS[seed % len(OXE_KINDS)]
            src = str(tmp_path / f"in{seed}" / "bridge" / "0.1.0")
            shutil.copytree(rlds_base, src)
            field = None
            if kind.startswith("json"):
                fname = ("features.json", "dataset_info.json")[int(rng.integers(2))]
                desc, field = mutate_json(os.path.join(src, fname), kind.split(":")[1], rng)
            else:
                fname = sorted(f for f in os.listdir(src) if ".tfrecord-" in f)[int(rng.integers(2))]
                desc = mutate_bytes(os.path.join(src, fname), kind.split(":")[1], rng)
            descs[seed] = f"{fname}: {desc}"
            out = str(tmp_path / f"out{seed}")
            argv = ["oxe", f"--input={src}", f"--output={out}", "--workers=1", "--no_progress",
                    "--image_size=8"]
            outcome, manifest = check_cli_outcome(argv, out, [fname] + ([field] if field else []), OXE_REASONS)
            if manifest is not None:
                assert manifest["num_episodes"] + manifest["num_skipped"] == manifest["source_episodes"]
                if kind.startswith("shard"):  # only that shard was damaged: every skip names it
                    assert all(s["item"].startswith(fname + "#") for s in manifest["skipped"]), manifest["skipped"]
            return outcome
        return f"seed {seed}", run

    descs: dict[int, str] = {}
    run_converter_cases("oxe", [case(seed) for seed in range(20)], descs)


EGO4D_KINDS = ("json:delete", "json:retype", "json:truncate", "mp4:random", "mp4:empty", "mp4:truncate",
               "mp4:flip", "missing_file", "missing_entry", "json:retype")


@pytest.mark.timeout(300, method="thread")  # a hang inside FFmpeg / TFDS: stacks, then exit
def test_ego4d_converter_on_mutated_layouts(ego4d_base, tmp_path):
    """ego4d.json / narration.json with a missing, mistyped or cut field, an mp4 replaced by random or
    zero bytes, cut or bit-flipped, a deleted mp4 and a videos[] entry without a file: each run ends in
    `wam-convert: error:` naming the file or field (exit 2), or converts with the damaged video
    skipped and counted under a documented reason."""

    def case(seed: int) -> tuple[str, Callable[[], str]]:
        def run() -> str:
            rng = np.random.default_rng(EGO4D_SEED0 + seed)
            kind = EGO4D_KINDS[seed % len(EGO4D_KINDS)]
            root = str(tmp_path / f"in{seed}")
            shutil.copytree(ego4d_base, root)
            videos = os.path.join(root, "v2", "full_scale")
            uids = sorted(f[:-4] for f in os.listdir(videos))
            video_dir, field, damaged = "full_scale", None, set()
            if kind.startswith("json"):
                fname = ("ego4d.json", "narration.json")[int(rng.integers(2))]
                path = os.path.join(root, fname) if fname == "ego4d.json" else os.path.join(
                    root, "v2", "annotations", fname)
                desc, field = mutate_json(path, kind.split(":")[1], rng)
                video_dir = ("full_scale", "clips")[int(rng.integers(2))]
                damaged = set(uids) | {"clip-a"}  # any video may lose its metadata
            elif kind == "missing_entry":
                fname = "ego4d.json"
                with open(os.path.join(root, fname)) as f:
                    meta = json.load(f)
                meta["videos"].append({**meta["videos"][0], "video_uid": "vid-gone"})
                with open(os.path.join(root, fname), "w") as f:
                    json.dump(meta, f)
                desc, damaged = "videos[] entry 'vid-gone' without an mp4", {"vid-gone"}
            else:
                uid = uids[int(rng.integers(len(uids)))]
                fname, damaged = f"{uid}.mp4", {uid}
                if kind == "missing_file":
                    os.remove(os.path.join(videos, fname))
                    desc = "deleted"
                else:
                    desc = mutate_bytes(os.path.join(videos, fname), kind.split(":")[1], rng)
            descs[seed] = f"{fname}: {desc} (--video_dir={video_dir})"
            out = str(tmp_path / f"out{seed}")
            argv = ["ego4d", f"--input={root}", f"--output={out}", f"--video_dir={video_dir}", "--workers=1",
                    "--no_progress", "--image_size=16", "--chunk_seconds=1"]
            names = [fname] + ([field] if field else []) + sorted(damaged)
            outcome, manifest = check_cli_outcome(argv, out, names, EGO4D_REASONS)
            if manifest is not None:
                v = manifest["videos"]
                assert v["converted"] + v["skipped"] == v["selected"] and v["skipped"] == manifest["num_skipped"]
                skipped = {s["item"] for s in manifest["skipped"]}
                assert skipped <= damaged, (skipped, damaged)
                if kind in ("missing_file", "missing_entry", "mp4:empty", "mp4:random"):
                    assert skipped == damaged, (skipped, damaged)  # these can never decode
                for s in manifest["skipped"]:  # the detail names the file
                    assert f"{s['item']}.mp4" in s["detail"], s
            return outcome
        return f"seed {seed}", run

    descs: dict[int, str] = {}
    run_converter_cases("ego4d", [case(seed) for seed in range(20)], descs)


# ------------------------------------------------------------------------------------------------
# 2. Config overrides

CONFIG = "configs/pusht_small.py"
BAD_VALUES = ("abc", "-1", "1e9", "[1,2]", "", "None", "nan", "inf", "-0", "0", "1.5", "True", "(1,)", "{}")


def _config_leaves(config: Any, prefix: str = "") -> list[str]:
    import ml_collections as mlc

    out = []
    for k, v in config.items():
        out.extend(_config_leaves(v, f"{prefix}{k}.") if isinstance(v, mlc.ConfigDict) else [prefix + k])
    return out


def test_config_override_fuzz():
    """Existing keys with values of the wrong type or range, misspelled keys and keys below a value
    or a missing section: each override applies (and `validate` accepts it or names the key) or
    raises ConfigError naming the key; nothing else escapes."""
    from wam_jax import config_utils

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = os.path.join(root, CONFIG)
    base = config_utils.load_config(spec)
    config_utils.validate(base)  # the unmodified config is valid: any error comes from the override
    leaves = _config_leaves(base)
    sections = sorted({k.rsplit(".", 1)[0] for k in leaves if "." in k})

    def case(seed: int) -> tuple[str, Callable[[], str]]:
        rng = np.random.default_rng(2000 + seed)
        value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
        kind = ("wrong value", "wrong value", "misspelled", "nested")[seed % 4]
        key = leaves[int(rng.integers(len(leaves)))]
        if kind == "misspelled":
            parts = key.split(".")
            j = int(rng.integers(len(parts)))
            w, i = parts[j], int(rng.integers(len(parts[j])))
            parts[j] = w[:i] + w[i + 1:] if len(w) > 1 and rng.random() < 0.5 else w[:i] + "q" + w[i:]
            key = ".".join(parts)
        elif kind == "nested":
            key = key + ".sub" if rng.random() < 0.5 else sections[int(rng.integers(len(sections)))] + ".nope.deeper"
        flag = f"--config.{key}={value}"

        def run() -> str:
            try:
                config = config_utils.load_config(spec, [flag])
            except config_utils.ConfigError as e:
                assert key in str(e), f"ConfigError does not name {key!r}: {e}"
                return "rejected"
            assert kind == "wrong value", f"{flag} was accepted, but names no existing key"
            try:
                config_utils.validate(config)
            except config_utils.ConfigError as e:
                assert key in str(e), f"validate's ConfigError does not name {key!r}: {e}"
                return "applied, rejected by validate"
            return "applied, valid"
        return f"seed {seed} {flag}", run

    cases = [case(seed) for seed in range(200)]
    outcomes = run_cases(cases)
    print(f"config override fuzz: {len(cases)} cases: {dict(outcomes)}")


# ------------------------------------------------------------------------------------------------
# 3. WorldModel inputs


@pytest.fixture(scope="module")
def wm(tmp_path_factory):
    from tests.test_world_model_api import one_device_mesh, shared_workdir
    from wam_jax import WorldModel

    return WorldModel.load(shared_workdir(tmp_path_factory)[0], mesh=one_device_mesh())


def _bad_image(rng: np.random.Generator, s: int) -> tuple[str, Any]:
    kind = ("rank", "size", "channels", "float64", "bool", "str", "empty", "ragged")[int(rng.integers(8))]
    good = (2, s, s, 3)
    if kind == "rank":
        return kind, np.zeros(((s, s), (1, 1, 1, s, s, 3), (s * s * 3,))[int(rng.integers(3))], np.uint8)
    if kind == "size":
        d = int(rng.choice([-8, -3, -1, 1, 5]))
        return kind, np.zeros((2, s + d, s, 3) if rng.random() < 0.5 else (2, s, s + d, 3), np.uint8)
    if kind == "channels":
        return kind, np.zeros((2, s, s, int(rng.choice([1, 2, 4]))), np.uint8)
    if kind == "float64":
        return kind, rng.normal(128, 300, good)  # values far outside [0, 255]
    if kind == "bool":
        return kind, rng.random(good) > 0.5
    if kind == "str":
        return kind, np.full(good, "x")
    if kind == "empty":
        return kind, np.zeros(((0, s, s, 3), (2, 0, s, s, 3), (0, 2, s, s, 3))[int(rng.integers(3))], np.uint8)
    return kind, [np.zeros((s, s, 3), np.uint8), np.zeros((s - 1, s, 3), np.uint8)]


def _bad_array(rng: np.random.Generator, good: np.ndarray, what: str) -> tuple[str, Any]:
    """A latents / actions / proprio array gone wrong: rank, width, NaN / inf, dtype, empty."""
    import jax.numpy as jnp

    kind = ("rank", "width", "nan", "inf", "complex", "str", "bool", "empty")[int(rng.integers(8))]
    if kind == "rank":
        x = good.reshape((1, 1, 1) + good.shape) if rng.random() < 0.5 else good.reshape(-1)
    elif kind == "width":
        x = np.zeros(good.shape[:-1] + (good.shape[-1] + int(rng.choice([-1, 1, 3])),), np.float32)
    elif kind in ("nan", "inf"):
        x = good.astype(np.float32).copy()
        x.flat[int(rng.integers(x.size))] = np.nan if kind == "nan" else -np.inf * rng.choice([-1, 1])
    elif kind == "complex":
        x = good.astype(np.complex64)
    elif kind == "str":
        x = np.full(good.shape, "a")
    elif kind == "bool":
        x = good > 0
    else:
        x = np.zeros((0,) + good.shape[1:], np.float32) if what == "latents" else np.zeros((0, good.shape[-1]))
    if kind in ("rank", "width", "nan", "inf") and rng.random() < 0.3:
        x = jnp.asarray(x)  # a device array takes the same checks
    return kind, x


@pytest.mark.timeout(300)
def test_world_model_input_fuzz(wm):
    """Wrong ranks, image sizes, dtypes (float64 outside [0, 255], bool, strings), NaN / inf, wrong
    action / latent widths and empty arrays for every WorldModel entry point: each raises
    ValueError / TypeError naming the argument and what was expected, before any XLA call."""
    from wam_jax.inference import planning

    s = wm.image_size
    space = wm.action_space()
    frames = np.random.default_rng(0).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    z = np.asarray(wm.encode(frames))
    actions = np.zeros((2, space.dim), np.float32)
    proprio = np.zeros((1, space.proprio_dim or 2), np.float32)
    cfg = planning.PlannerConfig(num_samples=4, num_elites=2, num_iterations=1, horizon=2)
    init_mean = np.zeros((cfg.horizon, space.dim), np.float32)

    # (method, argument) -> (call with the bad value, the name the error must use, how to make it)
    targets: list[tuple[str, Callable[[Any], Any], str, Callable[[np.random.Generator], tuple[str, Any]]]] = [
        ("encode(frames)", lambda x: wm.encode(x), "frames", lambda r: _bad_image(r, s)),
        ("plan(observation)", lambda x: wm.plan(x, frames[1], preset=cfg), "observation", lambda r: _bad_image(r, s)),
        ("plan(goal)", lambda x: wm.plan(frames[0], x, preset=cfg), "goal", lambda r: _bad_image(r, s)),
        ("predict(latents)", lambda x: wm.predict(x, actions), "latents", lambda r: _bad_array(r, z, "latents")),
        ("predict(actions)", lambda x: wm.predict(z[-1], x), "actions", lambda r: _bad_array(r, actions, "actions")),
        ("predict(proprio)", lambda x: wm.predict(z[-1], actions, proprio=x), "proprio",
         lambda r: _bad_array(r, proprio, "proprio")),
        ("infer_actions(latents)", lambda x: wm.infer_actions(x), "latents", lambda r: _bad_array(r, z, "latents")),
        ("latent_actions(latents)", lambda x: wm.latent_actions(x), "latents", lambda r: _bad_array(r, z, "latents")),
        ("policy(goal_latents)", lambda x: wm.policy(z[0], x), "goal_latents",
         lambda r: _bad_array(r, z[1], "latents")),
        ("plan_latents(context_latents)", lambda x: wm.plan_latents(x, z[1], preset=cfg), "context_latents",
         lambda r: _bad_array(r, z, "latents")),
        ("plan_latents(init_mean)", lambda x: wm.plan_latents(z, z[1], preset=cfg, init_mean=x), "init_mean",
         lambda r: _bad_array(r, init_mean, "actions")),
    ]

    def case(seed: int) -> tuple[str, Callable[[], str]]:
        rng = np.random.default_rng(3000 + seed)
        label, call, name, make = targets[seed % len(targets)]
        kind, bad = make(rng)

        def run() -> str:
            try:
                out = call(bad)
            except (ValueError, TypeError) as e:
                msg = str(e)
                assert name in msg and "expect" in msg, f"{type(e).__name__} names no {name!r} / expected: {msg}"
                return "rejected"
            raise AssertionError(f"accepted; returned {type(out).__name__}")  # e.g. silent NaN output
        return f"seed {seed} {label} <- {kind}", run

    cases = [case(seed) for seed in range(33)]
    outcomes = run_cases(cases)
    print(f"WorldModel input fuzz: {len(cases)} cases: {dict(outcomes)}")
