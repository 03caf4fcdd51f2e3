"""The PushT simulator, its success rule and the scripted pushing policy.

Both the demo data generator (`data_pipelines.convert.pusht`) and the closed-loop planning
evaluation (`wam-plan pusht`) drive the same simulator, score with the same rule and take goals
from the same scripted demonstrations, so these live here, below both: `sim` imports neither
`data_pipelines` nor `wam_jax`.

- `sim.pusht`: the headless `gym_pusht` env, its geometry, state read-out, reset-to-state, render.
- `sim.success`: DINO-WM's success rule on block poses.
- `sim.scripted_policy`: the pushing heuristic that plays the expert.
- `sim.rollouts`: one scripted episode per seed (deterministic).
"""
