"""One rollout of CWM's agent protocol, and its trajectory."""

from cwm_agent.agent.loop import MessageObserver, RolloutConfig, run_rollout
from cwm_agent.agent.trajectory import MessageRecord, Trajectory, Usage

__all__ = [
    "MessageObserver",
    "MessageRecord",
    "RolloutConfig",
    "Trajectory",
    "Usage",
    "run_rollout",
]
