"""The per-chunk Beta policy: actions in (0, 1), their scales and log-densities.

Owns the map action → scale and sampling with an explicit ``torch.Generator``. Knows nothing about
the network that produces alpha and beta, or about token costs.
"""

from __future__ import annotations

import torch

from allocator.config import SCALE_MAX, SCALE_MIN

ACTION_EPS = 1e-6
"""Actions are clamped to [ACTION_EPS, 1 - ACTION_EPS] before a log-density is taken."""
MAX_GAMMA_ROUNDS = 64
"""Rejection rounds of the Gamma sampler; each keeps a draw with probability > 0.95."""


def action_to_scale(
    actions: torch.Tensor, *, scale_min: float = SCALE_MIN, scale_max: float = SCALE_MAX
) -> torch.Tensor:
    """s = s_min + a (s_max - s_min), elementwise."""
    return scale_min + actions * (scale_max - scale_min)


def mean_scale(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale_min: float = SCALE_MIN,
    scale_max: float = SCALE_MAX,
) -> torch.Tensor:
    """Scale of the Beta mean, s_min + α/(α+β) (s_max - s_min): (B, K) → (B, K). For inference."""
    return action_to_scale(alpha / (alpha + beta), scale_min=scale_min, scale_max=scale_max)


def log_prob(alpha: torch.Tensor, beta: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Beta log-density of ``actions`` (B, K), clamped to [1e-6, 1 - 1e-6]; returns (B, K)."""
    actions = actions.clamp(ACTION_EPS, 1 - ACTION_EPS)
    return torch.distributions.Beta(alpha, beta, validate_args=False).log_prob(actions)


def _standard_gamma(shape: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gamma(shape, 1) draws for shape >= 1 (Marsaglia & Tsang 2000), reproducible by generator.

    torch's own Gamma sampler takes no generator, so this one is written with randn/rand.
    """
    assert bool((shape >= 1).all()), "the policy head guarantees alpha, beta >= 1"
    d = shape - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(shape)
    todo = torch.ones_like(shape, dtype=torch.bool)
    for _ in range(MAX_GAMMA_ROUNDS):
        x = torch.randn(shape.shape, generator=generator, device=shape.device, dtype=shape.dtype)
        u = torch.rand(shape.shape, generator=generator, device=shape.device, dtype=shape.dtype)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~take
        if not bool(todo.any()):
            return out
    raise RuntimeError(f"Gamma sampler did not converge in {MAX_GAMMA_ROUNDS} rounds")


def sample(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    scale_min: float = SCALE_MIN,
    scale_max: float = SCALE_MAX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one action per chunk: returns (actions (B, K), scales (B, K), log_prob (B, K)).

    Actions and scales carry no gradient; ``log_prob`` is differentiable in alpha and beta.
    a = X / (X + Y) with X ~ Gamma(α), Y ~ Gamma(β), both drawn from ``generator``.
    """
    with torch.no_grad():
        x = _standard_gamma(alpha.detach(), generator)  # (B, K)
        y = _standard_gamma(beta.detach(), generator)  # (B, K)
        actions = (x / (x + y)).clamp(ACTION_EPS, 1 - ACTION_EPS)  # (B, K)
        scales = action_to_scale(actions, scale_min=scale_min, scale_max=scale_max)  # (B, K)
    return actions, scales, log_prob(alpha, beta, actions)
