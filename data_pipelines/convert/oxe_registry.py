"""The standardization registry: one `DatasetSpec` per known Open X-Embodiment dataset.

Each entry names the keys and conventions of one dataset (see `oxe_spec` for what a spec says);
`get_spec` / `spec_for` look an entry up (and resolve it against a dataset's keys) and
`custom_spec` builds one from the `wam-convert oxe --image_key ...` flags. The gripper conventions
follow the public OXE standardization transforms (Octo / OpenVLA): e.g. fractal's relative
`gripper_closedness_action` (+1 close, -1 open) is integrated into an absolute open/closed state,
DROID's `gripper_position` (1 = closed) is inverted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from data_pipelines.convert.oxe_spec import DatasetSpec, Part, const, parse_part
from data_pipelines.convert.rlds import RLDSDataset, RLDSKeyError

_FRACTAL_LIKE_ACTION = (
    Part("action/world_vector"),
    Part("action/rotation_delta"),
    Part("action/gripper_closedness_action", transform="rel2abs_gripper"),
)

REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    for n in (spec.name, *spec.aliases):
        if n in REGISTRY:
            raise ValueError(f"dataset {n!r} is already registered")
        REGISTRY[n] = spec
    return spec


register(
    DatasetSpec(
        name="fractal20220817_data",
        aliases=("rt1", "fractal"),
        image_keys=("observation/image",),
        action=_FRACTAL_LIKE_ACTION,
        proprio=(Part("observation/base_pose_tool_reached"), Part("observation/gripper_closed")),
        language_keys=("observation/natural_language_instruction",),
        fps=3.0,
        embodiment="google_robot",
        notes="RT-1 (Google robot); gripper_closedness_action is relative (+1 close, -1 open).",
    )
)
register(
    DatasetSpec(
        name="bridge",
        aliases=("bridge_oxe",),
        image_keys=("observation/image",),
        action=(
            Part("action/world_vector"),
            Part("action/rotation_delta"),
            Part("action/open_gripper"),
        ),
        proprio=(Part("observation/state"),),
        language_keys=("observation/natural_language_instruction",),
        fps=5.0,
        embodiment="widowx",
        notes="BridgeData V2 as published in OXE (0.1.0): dict action, open_gripper bool.",
    )
)
register(
    DatasetSpec(
        name="bridge_dataset",
        aliases=("bridge_orig", "bridge_v2"),
        image_keys=("observation/image_0",),
        action=(Part("action", 0, 6), Part("action", 6, 7, transform="binarize_gripper")),
        proprio=(Part("observation/state"),),
        language_keys=("language_instruction",),
        fps=5.0,
        embodiment="widowx",
        notes="BridgeData V2 1.0.0 (project release): flat 7-d action, gripper in [0, 1] (1 open).",
    )
)
register(
    DatasetSpec(
        name="kuka",
        image_keys=("observation/image",),
        action=_FRACTAL_LIKE_ACTION,
        proprio=(
            Part("observation/clip_function_input/base_pose_tool_reached"),
            Part("observation/gripper_closed"),
        ),
        language_keys=("observation/natural_language_instruction",),
        fps=10.0,
        embodiment="kuka_iiwa",
        notes="QT-Opt grasping; proprio tensors are zlib-encoded (decoded by TFDS).",
    )
)
register(
    DatasetSpec(
        name="language_table",
        image_keys=("observation/rgb",),
        action=(Part("action"), const(0.0, 4), const(1.0, 1)),
        proprio=(Part("observation/effector_translation"),),
        language_keys=("observation/instruction",),
        language_encoding="code_points",
        fps=10.0,
        embodiment="xarm_pusher",
        notes="2-d planar delta action, padded to [dx, dy, 0, 0, 0, 0, gripper=1 (open)].",
    )
)
register(
    DatasetSpec(
        name="taco_play",
        image_keys=("observation/rgb_static",),
        wrist_image_keys=("observation/rgb_gripper",),
        action=(
            Part("action/rel_actions_world", 0, 6),
            Part("action/rel_actions_world", 6, 7, transform="clip01"),
        ),
        proprio=(Part("observation/robot_obs", 0, 6), Part("observation/robot_obs", 7, 8)),
        language_keys=("observation/natural_language_instruction",),
        fps=15.0,
        embodiment="franka",
        notes="rel_actions_world gripper is -1 close / +1 open; clipped to [0, 1].",
    )
)
register(
    DatasetSpec(
        name="droid",
        aliases=("droid_100",),
        image_keys=("observation/exterior_image_1_left",),
        wrist_image_keys=("observation/wrist_image_left",),
        action=(
            Part("action_dict/cartesian_velocity"),
            Part("action_dict/gripper_position", transform="invert"),
        ),
        proprio=(Part("observation/cartesian_position"), Part("observation/gripper_position")),
        language_keys=("language_instruction", "language_instruction_2", "language_instruction_3"),
        fps=15.0,
        embodiment="franka",
        notes="gripper_position is 1 = closed, inverted to 1 = open.",
    )
)
register(
    DatasetSpec(
        name="pusht",
        image_keys=("observation/image", "observation/pixels"),
        action=(Part("action"),),
        action_keys=("target_x", "target_y"),
        action_is_delta=(False, False),
        proprio=(Part("observation/state|observation/agent_pos"),),
        # The simulator's block pose, where recorded (`wam-convert pusht` writes it): x, y, angle.
        privileged=(Part("observation/block_pose", 0, 2), Part("observation/block_pose", 2, 3, transform="cos_sin")),
        privileged_keys=("block_x", "block_y", "block_cos", "block_sin"),
        language_keys=("language_instruction", "episode_metadata/language_instruction"),
        fps=10.0,
        embodiment="pusht",
        notes="2-d absolute target position of the pusher; proprio = 2-d agent position.",
    )
)


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise KeyError(
            f"no standardization registered for dataset {name!r}; registered: {sorted(REGISTRY)}. "
            f"Pass --image_key/--action_key (and optionally --proprio_key/--language_key) "
            f"to convert it with an explicit spec."
        )
    return REGISTRY[name]


def custom_spec(
    *,
    name: str,
    image_key: str | None = None,
    action_keys: Sequence[str] = (),
    proprio_keys: Sequence[str] = (),
    privileged_keys: Sequence[str] = (),
    language_key: str | None = None,
    wrist_image_key: str | None = None,
    fps: float | None = None,
    embodiment: str | None = None,
    delta_dims: Sequence[int] | None = None,
    base: DatasetSpec | None = None,
) -> DatasetSpec:
    """A spec from user flags, optionally overriding fields of a registry entry (`base`).

    Keys use the `parse_part` syntax ('observation/state[0:6]', 'action/gripper:invert').
    `delta_dims` lists the action dims that are per-step deltas (the rest are absolute); with
    new action keys and no `delta_dims` every dim is taken as absolute.
    """
    if base is None and (image_key is None or not action_keys):
        raise ValueError(
            f"dataset {name!r} is not in the registry ({sorted(REGISTRY)}); give at least "
            f"--image_key and --action_key"
        )
    action = tuple(parse_part(k) for k in action_keys)
    fields: dict[str, Any] = {}
    if image_key is not None:
        fields["image_keys"] = (image_key,)
    if wrist_image_key is not None:
        fields["wrist_image_keys"] = (wrist_image_key,) if wrist_image_key else ()
    if action:
        fields["action"] = action
        fields["action_keys"] = ()  # unnamed dims: the converter names them after the parts
        fields["action_is_delta"] = None
        fields["delta_dims"] = None
    if proprio_keys:
        fields["proprio"] = tuple(parse_part(k) for k in proprio_keys)
    if privileged_keys:
        fields["privileged"] = tuple(parse_part(k) for k in privileged_keys)
        fields["privileged_keys"] = ()  # unnamed dims: named after the parts
    if language_key is not None:
        fields["language_keys"] = (language_key,) if language_key else ()
    if delta_dims is not None:
        fields["delta_dims"] = tuple(int(i) for i in delta_dims)
    if fps is not None:
        fields["fps"] = float(fps)
    if embodiment is not None:
        fields["embodiment"] = embodiment
    if base is not None:
        return replace(base, strict=True, notes=base.notes + " (with user overrides)", **fields)
    return DatasetSpec(
        name=name,
        image_keys=fields["image_keys"],
        action=fields["action"],
        action_keys=(),
        fps=float(fps) if fps is not None else 10.0,
        embodiment=embodiment or name,
        wrist_image_keys=fields.get("wrist_image_keys", ()),
        proprio=fields.get("proprio", ()),
        privileged=fields.get("privileged", ()),
        language_keys=fields.get("language_keys", ()),
        delta_dims=fields.get("delta_dims"),
        notes="user-supplied spec",
        strict=True,
    )


def spec_for(ds: RLDSDataset, name: str | None = None) -> DatasetSpec:
    """The registry entry for `name` (default: the dataset's own name), resolved against `ds`.

    When a name is registered under several layouts (e.g. 'bridge' 0.1.0 vs 1.0.0 are separate
    entries under different names), an alias whose keys do not match falls back to any entry
    whose keys all resolve, so a renamed copy of a known layout still converts.
    """
    name = name or ds.name
    spec = get_spec(name)
    try:
        return spec.resolve(ds)
    except RLDSKeyError as first_error:
        for other in dict.fromkeys(REGISTRY.values()):
            if other is spec or other.embodiment != spec.embodiment:
                continue
            try:
                return other.resolve(ds)
            except RLDSKeyError:
                continue
        raise first_error from None
