"""The ResAdapt allocator: a small network that picks a resolution scale per temporal chunk.

Importable on its own (config, network, Beta policy, save/load); imports nothing from resadapt.
"""

from allocator.config import SCALE_MAX, SCALE_MIN, AllocatorConfig
from allocator.distribution import action_to_scale, log_prob, mean_scale, sample
from allocator.model import Allocator, AllocatorOutput

__all__ = [
    "SCALE_MAX",
    "SCALE_MIN",
    "Allocator",
    "AllocatorConfig",
    "AllocatorOutput",
    "action_to_scale",
    "log_prob",
    "mean_scale",
    "sample",
]
