"""What one finished conversion shard contributed: counts, skips, the mergeable action / proprio /
privileged statistics and per-shard facts, stored as `.progress/<shard>.json` so a resumed
conversion keeps finished shards."""

from __future__ import annotations

import dataclasses
from typing import Any

from data_pipelines.convert.stats import RunningStats


@dataclasses.dataclass
class ShardResult:
    """What one finished shard contributed (stored as `.progress/<shard>.json`)."""

    shard: str
    num_episodes: int = 0
    num_frames: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    action_stats: RunningStats = dataclasses.field(default_factory=RunningStats)
    proprio_stats: RunningStats = dataclasses.field(default_factory=RunningStats)
    privileged_stats: RunningStats = dataclasses.field(default_factory=RunningStats)
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
            "action_stats": self.action_stats.to_json(),
            "proprio_stats": self.proprio_stats.to_json(),
            "privileged_stats": self.privileged_stats.to_json(),
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
            action_stats=RunningStats.from_json(d["action_stats"]),
            proprio_stats=RunningStats.from_json(d["proprio_stats"]),
            privileged_stats=(RunningStats.from_json(d["privileged_stats"]) if "privileged_stats" in d
                              else RunningStats()),
            info=dict(d.get("info", {})),
            episode_ids=[str(e) for e in d.get("episode_ids", [])],
            episode_lengths=[int(n) for n in d.get("episode_lengths", [])],
        )
