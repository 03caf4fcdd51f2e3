"""What one finished conversion shard contributed: counts, skips, the mergeable action / proprio /
privileged statistics and per-shard facts, stored as `.progress/<shard>.json` so a resumed
conversion keeps finished shards."""

from __future__ import annotations

import dataclasses
from typing import Any

from data_pipelines.convert.stats import RunningStats

MODALITIES = ("action", "proprio", "privileged")  # the per-step vectors an episode may carry


@dataclasses.dataclass
class ShardResult:
    """What one finished shard contributed (stored as `.progress/<shard>.json`)."""

    shard: str
    num_episodes: int = 0
    num_frames: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # Per modality of MODALITIES (stored as '<modality>_stats').
    stats: dict[str, RunningStats] = dataclasses.field(
        default_factory=lambda: {m: RunningStats() for m in MODALITIES})
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    episode_ids: list[str] = dataclasses.field(default_factory=list)  # record order
    episode_lengths: list[int] = dataclasses.field(default_factory=list)
    resumed: bool = False  # finished by an earlier run

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "num_episodes": self.num_episodes,
            "num_frames": self.num_frames,
            "seconds": self.seconds,
            "skipped": self.skipped,
            **{f"{m}_stats": self.stats[m].to_json() for m in MODALITIES},
            "info": self.info,
            "episode_ids": self.episode_ids,
            "episode_lengths": self.episode_lengths,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardResult:
        return cls(
            shard=d["shard"],
            num_episodes=int(d["num_episodes"]),
            num_frames=int(d["num_frames"]),
            seconds=float(d["seconds"]),
            skipped=list(d["skipped"]),
            # a shard finished before privileged states were recorded has none
            stats={m: RunningStats.from_json(d[f"{m}_stats"]) if f"{m}_stats" in d else RunningStats()
                   for m in MODALITIES},
            info=dict(d.get("info", {})),
            episode_ids=[str(e) for e in d.get("episode_ids", [])],
            episode_lengths=[int(n) for n in d.get("episode_lengths", [])],
        )
