"""How one Open X-Embodiment (RLDS) dataset maps onto the converter's common form.

Every OXE dataset stores cameras, actions, proprioception and language under its own keys and
conventions. A `DatasetSpec` says, declaratively, how to map one dataset onto the common form the
converter writes:

* `image_keys` / `wrist_image_keys`: the primary and (optional) wrist camera; the first key
  present in the dataset is used;
* `action`: concatenated `Part`s giving a 7-d end-effector delta action
  `[dx, dy, dz, droll, dpitch, dyaw, gripper]` with an *absolute* gripper command in [0, 1],
  1 = open (PushT: its native 2-d absolute target position);
* `proprio`: concatenated `Part`s (end-effector pose + gripper, as the dataset records them);
* `privileged`: concatenated `Part`s of a state the robot does not sense but a simulator (or motion
  capture) records, e.g. PushT's block pose: never a model input, only a training target
  (`loss.privileged`) and the ground truth of probes;
* `language_keys`: where the instruction lives: a step key (first non-empty step value is used),
  an episode-level key (`episode_metadata/...`), or zero-padded Unicode code points (language_table);
* `fps`: the control rate.

Specs are plain frozen dataclasses of strings and numbers, so they pickle into worker processes
and a user-supplied spec (`oxe_registry.custom_spec`, from the `wam-convert oxe --image_key ...`
flags) is the same kind of object as a registry entry. The named `TRANSFORMS` a `Part` may apply
carry the gripper conventions of the public OXE standardization transforms (Octo / OpenVLA).
The per-dataset entries live in `oxe_registry`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from data_pipelines.convert.rlds import RLDSDataset, RLDSKeyError, lookup

EEF_ACTION_KEYS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


# ----------------------------------------------------------------------------- transforms
def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative gripper commands (+1 close, -1 open, ~0 no change) -> absolute (1 open, 0 closed).

    The state before the first command is the opposite of that command (a first 'close' means
    it was open); with no command at all the gripper is taken as open throughout.
    """
    a = np.asarray(actions, np.float64).reshape(-1)
    thr = np.where(a < -0.1, 1, np.where(a > 0.1, -1, 0))  # +1 open, -1 close, 0 none
    nz = np.flatnonzero(thr)
    state = -thr[nz[0]] if nz.size else 1
    out = np.empty(a.shape[0], np.float32)
    for t in range(a.shape[0]):
        if thr[t] != 0:
            state = thr[t]
        out[t] = state
    return (out / 2 + 0.5)[:, None]


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper commands in [0, 1] (1 open) -> {0, 1}.

    Values above 0.95 are open, below 0.05 closed; an in-between value takes the state reached
    after it (scanning backwards), the trailing in-between run the last value.
    """
    a = np.asarray(actions, np.float64).reshape(-1)
    out = np.empty(a.shape[0], np.float32)
    carry = a[-1] if a.size else 0.0
    for t in range(a.shape[0] - 1, -1, -1):
        if a[t] > 0.95:
            carry = 1.0
        elif a[t] < 0.05:
            carry = 0.0
        out[t] = carry
    return out[:, None]


TRANSFORMS = {
    "identity": lambda x: x,
    "rel2abs_gripper": rel2abs_gripper,
    "binarize_gripper": binarize_gripper,
    "invert": lambda x: 1.0 - x,
    "clip01": lambda x: np.clip(x, 0.0, 1.0),
    # An angle (radians) -> (cos, sin): continuous across the wrap, so a regression can target it.
    "cos_sin": lambda x: np.concatenate([np.cos(x), np.sin(x)], axis=1),
}


@dataclass(frozen=True)
class Part:
    """A slice of one step key (or a constant) in a standardized vector.

    `key` is a '/'-path under `steps`; alternatives separated by '|' are tried in order (the
    first present is used). `start` / `stop` slice the last axis; `transform` is a name in
    `TRANSFORMS`. A part with `key=None` is the constant `value` repeated `size` times.
    """

    key: str | None
    start: int | None = None
    stop: int | None = None
    transform: str = "identity"
    value: float = 0.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; known: {sorted(TRANSFORMS)}")
        if self.key is None and self.size <= 0:
            raise ValueError("a constant Part needs size > 0")

    def describe(self) -> str:
        if self.key is None:
            return f"const({self.value:g} x {self.size})"
        sl = (
            ""
            if self.start is None and self.stop is None
            else f"[{self.start or ''}:{self.stop or ''}]"
        )
        tr = "" if self.transform == "identity" else f" ({self.transform})"
        return f"{self.key}{sl}{tr}"

    def dim_names(self, width: int) -> list[str]:
        """Names of the `width` dims this part yields: the key, indexed (`key[i]`, `i` in the
        stored vector) when it is a vector or a slice of one."""
        key = self.key if self.key is not None else f"const({self.value:g})"
        start = self.start or 0
        sliced = self.start is not None or self.stop is not None
        if sliced and start >= 0 and (self.stop is None or self.stop - start == width):
            return [f"{key}[{start + i}]" for i in range(width)]
        if width == 1:  # a scalar key, or a transform that reduced a slice to one value
            return [key if not sliced else f"{key}[{self.start or ''}:{self.stop or ''}]"]
        if self.transform != "identity":  # a transform that changed the width (cos_sin)
            return [f"{self.describe()}[{i}]" for i in range(width)]
        return [f"{key}[{i}]" for i in range(width)]


def const(value: float, size: int) -> Part:
    return Part(None, value=value, size=size)


def parse_part(text: str) -> Part:
    """Parses a CLI key 'path', 'path[a:b]' or 'path[a:b]:transform' into a `Part`."""
    m = re.fullmatch(
        r"(?P<key>[^\[\]:]+)(\[(?P<a>-?\d*):(?P<b>-?\d*)\])?(:(?P<tr>\w+))?", text.strip()
    )
    if not m:
        raise ValueError(
            f"cannot parse key {text!r}; expected 'path', 'path[a:b]' or 'path[a:b]:transform'"
        )
    a, b = m.group("a"), m.group("b")
    return Part(
        m.group("key"),
        int(a) if a else None,
        int(b) if b else None,
        m.group("tr") or "identity",
    )


@dataclass(frozen=True)
class StandardEpisode:
    """An episode in the common form, before resizing / re-encoding."""

    frames: list[Any]  # per step: encoded image bytes or uint8 [H, W, C]
    wrist_frames: list[Any]
    action: np.ndarray  # float32 [T, A]
    proprio: np.ndarray | None  # float32 [T, P]
    language: str
    privileged: np.ndarray | None = None  # float32 [T, K]

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class DatasetSpec:
    """How one RLDS dataset maps onto the converted format (see module docstring)."""

    name: str
    image_keys: tuple[str, ...]
    action: tuple[Part, ...]
    fps: float
    embodiment: str
    wrist_image_keys: tuple[str, ...] = ()
    proprio: tuple[Part, ...] = ()
    privileged: tuple[Part, ...] = ()
    privileged_keys: tuple[str, ...] = ()  # one name per privileged dim (else derived from the parts)
    language_keys: tuple[str, ...] = ()
    language_encoding: str = "text"  # 'text' | 'code_points'
    action_keys: tuple[str, ...] = EEF_ACTION_KEYS
    aliases: tuple[str, ...] = ()  # other dataset names (dataset_info.json 'name') served by it
    notes: str = ""
    strict: bool = False  # optional keys (wrist, language) must exist too: user-given specs
    # Per action dim: a per-step delta (summed when the loader strides over frames) or an
    # absolute target (the last one is taken). None: the 7-d EEF layout's 6 deltas + absolute
    # gripper when `action_keys` is the EEF layout, else all absolute.
    action_is_delta: tuple[bool, ...] | None = None
    delta_dims: tuple[int, ...] | None = None  # user-given delta dims (overrides the above)

    # ---------------------------------------------------------------- validation
    def resolve(self, ds: RLDSDataset) -> DatasetSpec:
        """Returns a copy with every candidate list narrowed to the key present in `ds`.

        Raises RLDSKeyError naming the spec field, the missing key(s) and the dataset's keys.
        """

        def pick(field_name: str, candidates: Sequence[str], required: bool) -> tuple[str, ...]:
            for c in candidates:
                if ds.has_step_key(c) or c in ds.episode_keys:
                    return (c,)
            if not candidates or not (required or self.strict):
                return ()
            raise RLDSKeyError(
                f"{ds.name} ({ds.builder_dir}): {field_name} key "
                f"{' or '.join(map(repr, candidates))} not found (spec {self.name!r}); "
                f"the dataset has step keys: {sorted(ds.step_keys)}"
                + (f" and episode keys: {sorted(ds.episode_keys)}" if ds.episode_keys else "")
            )

        def resolve_parts(field_name: str, parts: Sequence[Part]) -> tuple[Part, ...]:
            out = []
            for p in parts:
                if p.key is None:
                    out.append(p)
                    continue
                (key,) = pick(field_name, p.key.split("|"), True)
                out.append(replace(p, key=key))
            return tuple(out)

        # A privileged state is recorded by some copies of a dataset only (a simulator's): its
        # absence skips nothing. A user-given (strict) spec still names the missing key.
        try:
            privileged = resolve_parts("privileged", self.privileged)
        except RLDSKeyError:
            if self.strict:
                raise
            privileged = ()
        image = pick("image", self.image_keys, True)
        if ds.step_leaf(image[0]).kind not in ("image", "tensor"):
            raise RLDSKeyError(f"{ds.name}: image key {image[0]!r} is not an image feature")
        return replace(
            self,
            image_keys=image,
            wrist_image_keys=pick("wrist image", self.wrist_image_keys, False),
            action=resolve_parts("action", self.action),
            proprio=resolve_parts("proprio", self.proprio),
            privileged=privileged,
            # language: every present candidate, tried in order per episode (DROID leaves
            # its first instruction empty on some episodes)
            language_keys=tuple(
                k for c in self.language_keys for k in pick("language", (c,), False)
            ),
        )

    # ---------------------------------------------------------------- standardization
    def _vector(self, steps: Mapping[str, Any], parts: Sequence[Part], n: int) -> np.ndarray:
        cols = []
        for p in parts:
            if p.key is None:
                cols.append(np.full((n, p.size), p.value, np.float64))
                continue
            x = np.asarray(_leaf_or_group(steps, p.key), np.float64)
            if x.shape[0] != n:
                raise ValueError(f"{p.key} has {x.shape[0]} steps, the image key has {n}")
            x = x.reshape(n, int(np.prod(x.shape[1:])))[:, p.start : p.stop]
            if n == 0:
                cols.append(x)
                continue
            cols.append(np.asarray(TRANSFORMS[p.transform](x), np.float64).reshape(n, -1))
        return (
            np.concatenate(cols, axis=1).astype(np.float32)
            if cols
            else np.zeros((n, 0), np.float32)
        )

    def language(self, episode: Mapping[str, Any]) -> str:
        for key in self.language_keys:
            try:
                val = lookup(episode["steps"], key)
            except KeyError:
                try:
                    val = lookup(episode, key)
                except KeyError:
                    continue
            for text in _texts(val, self.language_encoding):
                if text:
                    return text
        return ""

    def standardize(self, episode: Mapping[str, Any]) -> StandardEpisode:
        """Maps a decoded RLDS episode (from `RLDSDataset`) to the common form.

        Call on a spec returned by `resolve` (single keys). Images are passed through as
        stored (bytes when read with `decode_images=False`).
        """
        steps = episode["steps"]
        frames = list(lookup(steps, self.image_keys[0]))
        n = len(frames)
        wrist = list(lookup(steps, self.wrist_image_keys[0])) if self.wrist_image_keys else []
        action = self._vector(steps, self.action, n)
        proprio = self._vector(steps, self.proprio, n) if self.proprio else None
        privileged = self._vector(steps, self.privileged, n) if self.privileged else None
        return StandardEpisode(frames, wrist, action, proprio, self.language(episode), privileged)

    def delta_mask(self, action_dim: int) -> list[bool]:
        """`dataset.json`'s `action_is_delta` for an action of `action_dim` dims."""
        if self.delta_dims is not None:
            bad = [i for i in self.delta_dims if not 0 <= i < action_dim]
            if bad:
                raise ValueError(
                    f"spec {self.name!r}: delta dims {bad} out of range for a {action_dim}-d action"
                )
            return [i in self.delta_dims for i in range(action_dim)]
        if self.action_is_delta is not None:
            if len(self.action_is_delta) != action_dim:
                raise ValueError(
                    f"spec {self.name!r}: action_is_delta has {len(self.action_is_delta)} "
                    f"entries but the action has {action_dim} dims"
                )
            return list(self.action_is_delta)
        if self.action_keys == EEF_ACTION_KEYS and action_dim == len(EEF_ACTION_KEYS):
            return [True] * 6 + [False]
        return [False] * action_dim

    def dim_names(self, episode: Mapping[str, Any]) -> dict[str, list[str]]:
        """`dataset.json`'s `action_names`, `proprio_names` and `privileged_names` (by modality):
        one name per dimension. Actions (privileged state) take `action_keys` (`privileged_keys`)
        when they name every dim (the registry's names), else each part's key, with the index
        (`key[i]`) when the part holds a vector or a slice; proprio the latter."""
        steps = episode["steps"]
        n = len(lookup(steps, self.image_keys[0]))

        def derived(parts: Sequence[Part]) -> list[str]:
            return [name for p in parts for name in p.dim_names(self._vector(steps, (p,), n).shape[1])]

        def named(parts: Sequence[Part], keys: Sequence[str]) -> list[str]:
            names = derived(parts)
            return list(keys) if len(keys) == len(names) else names

        return {"action": named(self.action, self.action_keys), "proprio": derived(self.proprio),
                "privileged": named(self.privileged, self.privileged_keys)}

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "image_key": list(self.image_keys),
            "wrist_image_key": list(self.wrist_image_keys),
            "action": [p.describe() for p in self.action],
            "proprio": [p.describe() for p in self.proprio],
            "privileged": [p.describe() for p in self.privileged],
            "language_key": list(self.language_keys),
            "fps": self.fps,
        }


def _leaf_or_group(steps: Mapping[str, Any], key: str) -> np.ndarray:
    """A step leaf [T, ...], or a dict of leaves concatenated along the last axis."""
    x = lookup(steps, key)
    if isinstance(x, Mapping):
        leaves = [np.asarray(v, np.float64) for _, v in sorted(x.items())]
        n = leaves[0].shape[0]
        return np.concatenate([v.reshape(n, int(np.prod(v.shape[1:]))) for v in leaves], axis=1)
    return np.asarray(x)


def _texts(val: Any, encoding: str) -> list[str]:
    """Candidate instruction strings of a language field, one per step (or one per episode)."""
    if encoding == "code_points":
        # [T, L] Unicode code points padded with zeros (language_table's `instruction`); what
        # follows the first zero is padding.
        arr = np.asarray(val)
        rows = arr[None] if arr.ndim == 1 else arr
        out = []
        for row in rows:
            zeros = np.flatnonzero(row == 0)
            row = row[: zeros[0]] if zeros.size else row
            out.append("".join(map(chr, row.tolist())))
        return out
    if isinstance(val, np.ndarray):
        return [str(v) for v in val.reshape(-1)]
    return [str(val)]
