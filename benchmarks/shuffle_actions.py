"""The control of what a labeled dataset's actions carry: the same episodes, each with another
episode's actions.

    python benchmarks/shuffle_actions.py --source=DIR --output=DIR [--seed=0]

Every episode keeps its frames (and latents) and takes the whole action sequence of another
episode of the same length (a random derangement within each length), so the actions keep their
distribution and their course over time but no longer belong to the frames. A policy that gains
as much from the shuffled copy as from the original gains from something other than the labels
(more frames, regularization); `BENCHMARKS.md` §13 runs it beside `wam-synth`'s pairs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import paths, records  # noqa: E402

# dataset.json fields the copy keeps; counts, shards and dims are the conversion's own
KEEP = ("name", "kind", "embodiment", "image_size", "fps", "source", "synthetic", "action_is_delta",
        "action_names", "jpeg_quality", "min_length")


def derangement(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """perm with `lengths[perm] == lengths` and `perm[i] != i` wherever a length has company."""
    perm = np.arange(len(lengths))
    for n in np.unique(lengths):
        group = np.flatnonzero(lengths == n)
        if len(group) > 1:  # a cyclic shift of a random order moves every member
            order = rng.permutation(group)
            perm[order] = np.roll(order, 1)
    return perm


def produce(plan: Any, log_: Any, *, episodes: list[records.Episode], perm: np.ndarray
            ) -> Iterator[records.Episode]:
    for i in plan.items:
        ep = episodes[i]
        yield records.Episode(episode_id=ep.episode_id, frames=ep.frames, action=episodes[perm[i]].action,
                              proprio=ep.proprio, latent=ep.latent, fps=ep.fps,
                              meta={**ep.meta, "actions_of": episodes[perm[i]].episode_id})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a labeled converted dataset")
    p.add_argument("--output", required=True, help="the copy with shuffled actions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from data_pipelines.convert import common

    info = records.read_dataset_info(args.source)
    if not info.get("action_dim"):
        raise SystemExit(f"--source={args.source}: the dataset has no actions to shuffle")
    episodes = list(records.iter_episodes(records.shard_paths(args.source, info)))
    perm = derangement(np.array([len(ep) for ep in episodes]), np.random.default_rng(args.seed))
    plans = common.plan_shards(list(range(len(episodes))), items_per_shard=512)
    return common.run_conversion(
        args.output, plans, functools.partial(produce, episodes=episodes, perm=perm),
        dataset_info={k: info[k] for k in KEEP if k in info},
        manifest_extra={"control": "actions shuffled across episodes", "source": paths.absolute(args.source),
                        "seed": args.seed, "synthetic": bool(info.get("synthetic"))},
        desc=f"{info['name']} (actions shuffled)")


if __name__ == "__main__":
    main()
