"""The feature layouts of real OXE datasets for the RLDS fixtures (`tests/rlds_fixtures.py`).

Each layout reproduces the key names, nesting, dtypes and encodings of the real dataset
(`features.json` of fractal20220817_data 0.1.0, bridge 0.1.0 (OXE) and 1.0.0 (BridgeData V2
release), kuka 0.1.0 (zlib-encoded proprio tensors), language_table 0.1.0 (instruction as Unicode
code points), taco_play 0.1.0, droid 1.0.0 (float64, three language fields)), plus `pusht` in
the layout the wam_jax PushT generator writes. Each also returns, per episode, the standardized
action / proprio / language the registry must produce, written out here independently of
`oxe_registry` so tests compare two implementations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipelines.convert import rlds_writer as W

LAYOUTS = (
    "fractal20220817_data",
    "bridge",
    "bridge_dataset",
    "kuka",
    "language_table",
    "taco_play",
    "droid",
    "pusht",
)

def moving_shapes(episode: int, t: int, h: int, w: int) -> np.ndarray:
    """A smooth scene: per-episode colored gradient, a square and a disc moving with t."""
    rng = np.random.default_rng(1000 + episode)
    base = rng.integers(40, 200, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = base[c] + 30 * np.sin((xx / w + yy / h + c / 3) * np.pi)
    s = max(3, h // 5)
    y0 = int((h - s) * (0.5 + 0.4 * np.sin(0.35 * t + episode)))
    x0 = int((w - s) * ((0.1 * t + 0.13 * episode) % 1.0))
    img[y0 : y0 + s, x0 : x0 + s] = (230, 60 + 10 * (episode % 10), 40)
    cy, cx = h * (0.3 + 0.4 * ((0.07 * t) % 1.0)), w * 0.7
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (h / 8) ** 2
    img[disc] = (30, 90, 220)
    return np.clip(img, 0, 255).astype(np.uint8)


def _gripper_rel(T: int, episode: int) -> tuple[np.ndarray, np.ndarray]:
    """A relative gripper command stream (+1 close, -1 open, 0 none) and its absolute state."""
    rel = np.zeros(T, np.float32)
    close_at, open_at = 1 + episode % 2, T - 2
    if close_at < T:
        rel[close_at] = 1.0
    if close_at < open_at < T:
        rel[open_at] = -1.0
    absolute = np.ones(T, np.float32)
    for t in range(T):
        if close_at <= t < open_at or (close_at <= t and open_at <= close_at):
            absolute[t] = 0.0
    return rel, absolute


def features_and_builder(name: str, hw: tuple[int, int], encoding: str) -> tuple[Any, Any]:
    """(features, step_builder) for a layout; step_builder(ep, T, rng) -> (steps, extras, truth)."""
    H, Wd = hw
    img = lambda: W.image((H, Wd, 3), encoding)  # noqa: E731
    small = lambda: W.image((H // 2, Wd // 2, 3), encoding)  # noqa: E731
    t32 = lambda *s: W.tensor(s, np.float32)  # noqa: E731
    lang_emb = t32(512)

    if name in ("fractal20220817_data", "kuka"):
        enc = "zlib" if name == "kuka" else None

        def zt(*s: int) -> Any:
            import tensorflow_datasets as tfds

            if enc:
                return tfds.features.Tensor(shape=s, dtype=np.float32, encoding=enc)
            return t32(*s)

        obs = {
            "image": img(),
            "natural_language_embedding": lang_emb,
            "natural_language_instruction": W.tensor((), np.str_),
            "gripper_closed": zt(1),
        }
        if name == "fractal20220817_data":
            obs.update(
                base_pose_tool_reached=t32(7),
                height_to_bottom=t32(1),
                vector_to_go=t32(3),
                workspace_bounds=t32(3, 3),
            )
        else:
            obs.update(
                {
                    "clip_function_input/base_pose_tool_reached": zt(7),
                    "clip_function_input/workspace_bounds": zt(3, 3),
                    "height_to_bottom": zt(1),
                    "task_id": zt(1),
                }
            )
        action = {
            "base_displacement_vector": t32(2),
            "base_displacement_vertical_rotation": t32(1),
            "gripper_closedness_action": t32(1),
            "rotation_delta": t32(3),
            "terminate_episode": W.tensor((3,), np.int32),
            "world_vector": t32(3),
        }
        extras = (
            {"success": W.tensor((), np.bool_)}
            if name == "kuka"
            else {"aspects": {"success": W.tensor((), np.bool_)}}
        )
        feats = W.rlds_features(obs, action, discount=False, extras=extras)

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            rel, absolute = _gripper_rel(T, e)
            wv = rng.normal(size=(T, 3)).astype(np.float32) * 0.1
            rd = rng.normal(size=(T, 3)).astype(np.float32) * 0.05
            pose = rng.normal(size=(T, 7)).astype(np.float32)
            gc = (1.0 - absolute)[:, None].astype(np.float32)
            lang = f"pick object {e}"
            steps = []
            for t in range(T):
                o: dict[str, Any] = {
                    "image": moving_shapes(e, t, H, Wd),
                    "natural_language_embedding": np.zeros(512, np.float32),
                    "natural_language_instruction": lang,
                    "gripper_closed": gc[t],
                }
                if name == "fractal20220817_data":
                    o.update(
                        base_pose_tool_reached=pose[t],
                        height_to_bottom=np.ones(1, np.float32),
                        vector_to_go=np.zeros(3, np.float32),
                        workspace_bounds=np.eye(3, dtype=np.float32),
                    )
                else:
                    o.update(
                        {
                            "clip_function_input/base_pose_tool_reached": pose[t],
                            "clip_function_input/workspace_bounds": np.eye(3, dtype=np.float32),
                            "height_to_bottom": np.ones(1, np.float32),
                            "task_id": np.full(1, e, np.float32),
                        }
                    )
                steps.append(
                    {
                        "observation": o,
                        "action": {
                            "base_displacement_vector": np.zeros(2, np.float32),
                            "base_displacement_vertical_rotation": np.zeros(1, np.float32),
                            "gripper_closedness_action": rel[t : t + 1],
                            "rotation_delta": rd[t],
                            "terminate_episode": np.array([0, 1, 0], np.int32),
                            "world_vector": wv[t],
                        },
                    }
                )
            top = {"success": True} if name == "kuka" else {"aspects": {"success": True}}
            truth = {
                "action": np.concatenate([wv, rd, absolute[:, None]], 1),
                "proprio": np.concatenate([pose, gc], 1),
                "language": lang,
            }
            return steps, top, truth

        return feats, build

    if name == "bridge":
        obs = {
            "image": img(),
            "natural_language_embedding": lang_emb,
            "natural_language_instruction": W.tensor((), np.str_),
            "state": t32(7),
        }
        action = {
            "open_gripper": W.tensor((), np.bool_),
            "rotation_delta": t32(3),
            "terminate_episode": W.tensor((), np.float32),
            "world_vector": t32(3),
        }
        feats = W.rlds_features(obs, action, discount=False)

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            wv = rng.normal(size=(T, 3)).astype(np.float32) * 0.01
            rd = rng.normal(size=(T, 3)).astype(np.float32) * 0.02
            opened = np.arange(T) % 4 < 2
            state = rng.normal(size=(T, 7)).astype(np.float32)
            lang = f"put the spoon in pot {e}"
            steps = [
                {
                    "observation": {
                        "image": moving_shapes(e, t, H, Wd),
                        "natural_language_embedding": np.zeros(512, np.float32),
                        "natural_language_instruction": lang,
                        "state": state[t],
                    },
                    "action": {
                        "open_gripper": bool(opened[t]),
                        "rotation_delta": rd[t],
                        "terminate_episode": np.float32(t == T - 1),
                        "world_vector": wv[t],
                    },
                }
                for t in range(T)
            ]
            truth = {
                "action": np.concatenate([wv, rd, opened[:, None].astype(np.float32)], 1),
                "proprio": state,
                "language": lang,
            }
            return steps, {}, truth

        return feats, build

    if name == "bridge_dataset":
        obs = {f"image_{i}": img() for i in range(4)}
        obs["state"] = t32(7)
        meta = {
            "file_path": W.text(),
            "episode_id": W.tensor((), np.int32),
            "has_image_0": W.tensor((), np.bool_),
            "has_language": W.tensor((), np.bool_),
        }
        feats = W.rlds_features(
            obs,
            t32(7),
            language_instruction=True,
            episode_metadata=meta,
            step_extras={"language_embedding": lang_emb},
        )

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            move = rng.normal(size=(T, 6)).astype(np.float32) * 0.01
            # continuous gripper with intermediate values, binarized by the standardization
            g = np.ones(T, np.float32)
            g[T // 2 :] = 0.0
            if T >= 4:
                g[T // 2 - 1] = 0.5  # in between -> takes the state reached after it (closed)
            gbin = np.where(g > 0.95, 1.0, 0.0).astype(np.float32)
            if T >= 4:
                gbin[T // 2 - 1] = 0.0
            state = rng.normal(size=(T, 7)).astype(np.float32)
            lang = f"open the drawer {e}"
            blank = np.zeros((H, Wd, 3), np.uint8)
            steps = [
                {
                    "observation": {
                        "image_0": moving_shapes(e, t, H, Wd),
                        "image_1": blank,
                        "image_2": blank,
                        "image_3": blank,
                        "state": state[t],
                    },
                    "action": np.concatenate([move[t], g[t : t + 1]]),
                    "language_instruction": lang,
                    "language_embedding": np.zeros(512, np.float32),
                }
                for t in range(T)
            ]
            top = {
                "episode_metadata": {
                    "file_path": f"/raw/bridge/{e}.pkl",
                    "episode_id": e,
                    "has_image_0": True,
                    "has_language": True,
                }
            }
            truth = {
                "action": np.concatenate([move, gbin[:, None]], 1),
                "proprio": state,
                "language": lang,
            }
            return steps, top, truth

        return feats, build

    if name == "language_table":
        obs = {
            "effector_target_translation": t32(2),
            "effector_translation": t32(2),
            "instruction": W.tensor((512,), np.int32),
            "rgb": img(),
        }
        feats = W.rlds_features(obs, t32(2), discount=False)

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            act = rng.normal(size=(T, 2)).astype(np.float32) * 0.02
            eff = rng.normal(size=(T, 2)).astype(np.float32)
            lang = f"push the red star to block {e}"
            codes = np.zeros(512, np.int32)
            codes[: len(lang)] = [ord(c) for c in lang]
            steps = [
                {
                    "observation": {
                        "effector_target_translation": eff[t] + act[t],
                        "effector_translation": eff[t],
                        "instruction": codes,
                        "rgb": moving_shapes(e, t, H, Wd),
                    },
                    "action": act[t],
                }
                for t in range(T)
            ]
            z = np.zeros((T, 4), np.float32)
            truth = {
                "action": np.concatenate([act, z, np.ones((T, 1), np.float32)], 1),
                "proprio": eff,
                "language": lang,
            }
            return steps, {}, truth

        return feats, build

    if name == "taco_play":
        obs = {
            "depth_gripper": t32(H // 2, Wd // 2),
            "depth_static": t32(H, Wd),
            "natural_language_embedding": lang_emb,
            "natural_language_instruction": W.tensor((), np.str_),
            "rgb_gripper": small(),
            "rgb_static": img(),
            "robot_obs": t32(15),
            "structured_language_instruction": W.tensor((), np.str_),
        }
        action = {
            "actions": t32(7),
            "rel_actions_gripper": t32(7),
            "rel_actions_world": t32(7),
            "terminate_episode": W.tensor((), np.float32),
        }
        feats = W.rlds_features(obs, action, discount=False)

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            rel = rng.normal(size=(T, 7)).astype(np.float32) * 0.1
            rel[:, 6] = np.where(np.arange(T) < T // 2, 1.0, -1.0)
            robot = rng.normal(size=(T, 15)).astype(np.float32)
            lang = f"rotate the blue block {e}"
            steps = [
                {
                    "observation": {
                        "depth_gripper": np.zeros((H // 2, Wd // 2), np.float32),
                        "depth_static": np.zeros((H, Wd), np.float32),
                        "natural_language_embedding": np.zeros(512, np.float32),
                        "natural_language_instruction": lang,
                        "rgb_gripper": moving_shapes(e + 500, t, H // 2, Wd // 2),
                        "rgb_static": moving_shapes(e, t, H, Wd),
                        "robot_obs": robot[t],
                        "structured_language_instruction": "rotate_blue_block_right",
                    },
                    "action": {
                        "actions": np.zeros(7, np.float32),
                        "rel_actions_gripper": np.zeros(7, np.float32),
                        "rel_actions_world": rel[t],
                        "terminate_episode": np.float32(0),
                    },
                }
                for t in range(T)
            ]
            truth = {
                "action": np.concatenate([rel[:, :6], np.clip(rel[:, 6:7], 0, 1)], 1),
                "proprio": np.concatenate([robot[:, :6], robot[:, 7:8]], 1),
                "language": lang,
                "wrist": np.stack([moving_shapes(e + 500, t, H // 2, Wd // 2) for t in range(T)])
                if T
                else None,
            }
            return steps, {}, truth

        return feats, build

    if name == "droid":
        t64 = lambda *s: W.tensor(s, np.float64)  # noqa: E731
        obs = {
            "cartesian_position": t64(6),
            "exterior_image_1_left": img(),
            "exterior_image_2_left": img(),
            "gripper_position": t64(1),
            "joint_position": t64(7),
            "wrist_image_left": img(),
        }
        action_dict = {
            "cartesian_position": t64(6),
            "cartesian_velocity": t64(6),
            "gripper_position": t64(1),
            "gripper_velocity": t64(1),
            "joint_position": t64(7),
            "joint_velocity": t64(7),
        }
        feats = W.rlds_features(
            obs,
            t64(7),
            language_instruction=True,
            episode_metadata={"file_path": W.text(), "recording_folderpath": W.text()},
            step_extras={
                "action_dict": action_dict,
                "language_instruction_2": W.text(),
                "language_instruction_3": W.text(),
            },
        )

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            vel = rng.normal(size=(T, 6)) * 0.1
            grip = np.clip(rng.uniform(-0.2, 1.2, size=(T, 1)), 0, 1)  # 1 = closed
            cart = rng.normal(size=(T, 6))
            gpos = rng.uniform(size=(T, 1))
            # first instruction empty on odd episodes: the second one is used
            lang1 = "" if e % 2 else f"put the marker in the cup {e}"
            lang2 = f"place marker into cup {e}"
            steps = [
                {
                    "observation": {
                        "cartesian_position": cart[t],
                        "exterior_image_1_left": moving_shapes(e, t, H, Wd),
                        "exterior_image_2_left": moving_shapes(e + 200, t, H, Wd),
                        "gripper_position": gpos[t],
                        "joint_position": np.zeros(7),
                        "wrist_image_left": moving_shapes(e + 300, t, H, Wd),
                    },
                    "action": np.concatenate([np.zeros(6), grip[t]]),
                    "action_dict": {
                        "cartesian_position": np.zeros(6),
                        "cartesian_velocity": vel[t],
                        "gripper_position": grip[t],
                        "gripper_velocity": np.zeros(1),
                        "joint_position": np.zeros(7),
                        "joint_velocity": np.zeros(7),
                    },
                    "language_instruction": lang1,
                    "language_instruction_2": lang2,
                    "language_instruction_3": "",
                }
                for t in range(T)
            ]
            top = {
                "episode_metadata": {
                    "file_path": f"/droid/{e}/trajectory.h5",
                    "recording_folderpath": f"/droid/{e}/recordings",
                }
            }
            truth = {
                "action": np.concatenate([vel, 1.0 - grip], 1).astype(np.float32),
                "proprio": np.concatenate([cart, gpos], 1).astype(np.float32),
                "language": lang1 or lang2,
                "wrist": np.stack([moving_shapes(e + 300, t, H, Wd) for t in range(T)])
                if T
                else None,
            }
            return steps, top, truth

        return feats, build

    if name == "pusht":
        feats = W.rlds_features(
            {"image": img(), "state": t32(2)}, t32(2), language_instruction=True
        )

        def build(e: int, T: int, rng: np.random.Generator) -> tuple[list, dict, dict]:
            target = rng.uniform(0, 512, size=(T, 2)).astype(np.float32)
            agent = rng.uniform(0, 512, size=(T, 2)).astype(np.float32)
            lang = "push the T onto the target"
            steps = [
                {
                    "observation": {"image": moving_shapes(e, t, H, Wd), "state": agent[t]},
                    "action": target[t],
                    "language_instruction": lang,
                }
                for t in range(T)
            ]
            return steps, {}, {"action": target, "proprio": agent, "language": lang}

        return feats, build

    raise ValueError(f"unknown fixture layout {name!r}; known: {LAYOUTS}")
