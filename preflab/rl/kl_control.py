"""The KL coefficient of the per-token penalty: fixed, or adapted toward a target KL.

Adaptive control (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", section 2.2): after each rollout batch of ``n`` sequences whose mean KL to
the reference is ``KL``,

    e     = clip(KL / target - 1, -0.2, 0.2)
    beta <- beta * (1 + e * n / horizon)

so the coefficient grows while the policy drifts past the target and shrinks below it. The
state (the current coefficient) is saved in checkpoints so a resumed run continues exactly.
"""

from __future__ import annotations


class FixedKLController:
    """A constant ``kl_coef``."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s proportional controller toward ``target`` KL (nats per sequence)."""

    def __init__(self, kl_coef: float, *, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(kl_coef: float, *, adaptive: bool, target: float = 6.0,
                  horizon: int = 10000) -> FixedKLController:
    if adaptive:
        return AdaptiveKLController(kl_coef, target=target, horizon=horizon)
    return FixedKLController(kl_coef)
