"""Analytic tests of preflab.losses: hand-picked tensors, expected values derived in docstrings.

Identities used throughout: ``-log sigmoid(x) = log(1 + e^-x)`` and therefore
``log(1 + e) - log(1 + e^-1) = 1`` (since ``1 + e = e (1 + e^-1)``).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from preflab.errors import ConfigError
from preflab.losses import (
    DIRECT_LOSSES,
    compute_direct_loss,
    dpo_loss,
    gae,
    get_direct_loss,
    hinge_loss,
    ipo_loss,
    kl_per_token,
    kto_loss,
    log_odds,
    orpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    reward_model_loss,
    robust_loss,
    simpo_loss,
    whiten,
)

A = math.log1p(math.exp(-1.0))  # -log sigmoid(1) = 0.31326...
LOG2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def four(pc, pr, rc, rr):
    return t(*pc), t(*pr), t(*rc), t(*rr)


# --- the DPO family --------------------------------------------------------------------


def test_policy_equals_reference_gives_log2_and_zero_rewards():
    """policy == reference means h = 0 for every pair, so DPO = -log sigmoid(0) = log 2.

    cDPO(eps): (1-eps) log 2 + eps log 2 = log 2. robust(eps): [(1-eps) - eps] log 2 / (1-2eps)
    = log 2. Implicit rewards beta * (logp - ref) = 0.
    """
    logps = t(-3.0, -10.0, -0.5)
    for losses, chosen, rejected in (
        dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1),
        dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1, label_smoothing=0.2),
        robust_loss(logps, logps - 1, logps, logps - 1, beta=0.1, label_smoothing=0.2),
    ):
        torch.testing.assert_close(losses, torch.full((3,), LOG2))
        assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_dpo_hand_computed_batch_of_three():
    """beta = 0.5; pairs as (pc, pr, rc, rr):

    ex0 (-1, -3, -2, -2): chosen ratio +1, rejected -1, h = 2, beta h = 1
        loss = log(1 + e^-1) = A = 0.313262; rewards (0.5, -0.5)
    ex1 (-5, -5, -4, -6): chosen ratio -1, rejected +1, h = -2, beta h = -1
        loss = log(1 + e) = A + 1 = 1.313262; rewards (-0.5, 0.5)
    ex2 (-2, -4, -2, -4): h = 0, loss = log 2; rewards (0, 0)
    cDPO eps = 0.25 on ex0: 0.75 A + 0.25 (A + 1) = A + 0.25.
    robust eps = 0.25 on ex0: [0.75 A - 0.25 (A + 1)] / 0.5 = A - 0.5 (negative is allowed).
    """
    pc, pr, rc, rr = four((-1, -5, -2), (-3, -5, -4), (-2, -4, -2), (-2, -6, -4))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(losses, t(A, A + 1, LOG2))
    torch.testing.assert_close(chosen, t(0.5, -0.5, 0.0))
    torch.testing.assert_close(rejected, t(-0.5, 0.5, 0.0))
    cdpo = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.25)[0]
    torch.testing.assert_close(cdpo[0], torch.tensor(A + 0.25))
    robust = robust_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.25)[0]
    torch.testing.assert_close(robust[0], torch.tensor(A - 0.5))


def test_rewards_are_detached():
    pc = t(-1.0, -2.0).requires_grad_()
    _, chosen, rejected = dpo_loss(pc, pc - 1, t(0, 0), t(0, 0), beta=0.1)
    assert not chosen.requires_grad and not rejected.requires_grad


def test_ipo_minimised_at_margin_one_over_two_beta():
    """beta = 0.25, so the target margin is 1/(2 beta) = 2. With refs and pr at 0, h = pc.

    L(h) = (h - 2)^2: L(2) = 0 with dL/dpc = 2 (h - 2) = 0; L(1.5) = L(2.5) = 0.25; at
    h = 3: L = 1, dL/dpc = 2, dL/dpr = -2.
    """
    pc = t(2.0, 1.5, 2.5, 3.0).requires_grad_()
    pr = torch.zeros(4, requires_grad=True)
    zeros = torch.zeros(4)
    losses = ipo_loss(pc, pr, zeros, zeros, beta=0.25)[0]
    torch.testing.assert_close(losses.detach(), t(0.0, 0.25, 0.25, 1.0))
    losses.sum().backward()
    torch.testing.assert_close(pc.grad, t(0.0, -1.0, 1.0, 2.0))
    torch.testing.assert_close(pr.grad, -pc.grad)


def test_hinge_hand_values():
    """beta = 0.5: h = 1 -> relu(0.5) = 0.5; h = 2 -> relu(0) = 0; h = -2 -> relu(2) = 2."""
    pc, pr, rc, rr = four((1, 2, -2), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    torch.testing.assert_close(hinge_loss(pc, pr, rc, rr, beta=0.5)[0], t(0.5, 0.0, 2.0))


def test_smoothing_zero_equals_dpo():
    """cDPO(eps=0) = DPO exactly; robust(eps=0) = [DPO(h) - 0] / 1 = DPO."""
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(16, generator=g) * 5 for _ in range(4)]
    dpo = dpo_loss(*args, beta=0.3)[0]
    torch.testing.assert_close(dpo_loss(*args, beta=0.3, label_smoothing=0.0)[0], dpo)
    torch.testing.assert_close(robust_loss(*args, beta=0.3, label_smoothing=0.0)[0], dpo)


def test_label_smoothing_range_is_checked():
    z = torch.zeros(2)
    with pytest.raises(ValueError):
        robust_loss(z, z, z, z, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(z, z, z, z, beta=0.1, label_smoothing=0.7)


def _grad_on_sequence_a(fn, a, b, a_is_chosen, **kw):
    """Gradient of the loss w.r.t. sequence A's log-prob, with A passed as chosen or rejected."""
    x = a.clone().requires_grad_()
    chosen, rejected = (x, b) if a_is_chosen else (b, x)
    fn(chosen, rejected, **kw)[0].sum().backward()
    return x.grad


@pytest.mark.parametrize(
    "fn,kw",
    [
        (dpo_loss, dict(beta=0.5)),
        (ipo_loss, dict(beta=0.5)),
        (hinge_loss, dict(beta=0.5)),
        (robust_loss, dict(beta=0.5, label_smoothing=0.2)),
        (simpo_loss, dict(beta=2.0, gamma=0.0)),
    ],
)
def test_swapping_chosen_and_rejected_flips_gradient_sign(fn, kw):
    """dL/dA < 0 when A is chosen (raise it) and > 0 when A is rejected (lower it).

    Margins are kept small (|h| <= 0.5) so IPO is below its target 1/(2 beta) = 1 either way
    and the hinge is active (beta |h| < 1). DPO, robust and SimPO have L'(h) < 0 everywhere.
    """
    a = t(-1.0, -2.0, -3.0)
    b = t(-1.5, -1.8, -3.0)
    if fn is simpo_loss:
        f = fn
    else:
        refs = (torch.zeros(3), torch.zeros(3))

        def f(chosen, rejected, **k):
            return fn(chosen, rejected, *refs, **k)

    g_chosen = _grad_on_sequence_a(f, a, b, True, **kw)
    g_rejected = _grad_on_sequence_a(f, a, b, False, **kw)
    assert torch.all(g_chosen < 0), g_chosen
    assert torch.all(g_rejected > 0), g_rejected


def test_dpo_swap_identity():
    """DPO(h) - DPO(-h) = log(1 + e^-x) - log(1 + e^x) = -x with x = beta h."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, generator=g) for _ in range(4))
    h = (pc - rc) - (pr - rr)
    diff = dpo_loss(pc, pr, rc, rr, beta=0.7)[0] - dpo_loss(pr, pc, rr, rc, beta=0.7)[0]
    torch.testing.assert_close(diff, -0.7 * h)


def test_extreme_logits_stay_finite():
    """beta * h = +-1e4 (and 1e4-sized log-probs for the reference-free losses)."""
    big = t(1e4, -1e4)
    zeros = torch.zeros(2)
    checks = [
        lambda x: dpo_loss(x, zeros, zeros, zeros, beta=1.0),
        lambda x: dpo_loss(x, zeros, zeros, zeros, beta=1.0, label_smoothing=0.1),
        lambda x: ipo_loss(x, zeros, zeros, zeros, beta=1.0),
        lambda x: hinge_loss(x, zeros, zeros, zeros, beta=1.0),
        lambda x: robust_loss(x, zeros, zeros, zeros, beta=1.0, label_smoothing=0.1),
        lambda x: simpo_loss(x, zeros, beta=1.0, gamma=0.5),
        lambda x: orpo_loss(-x.abs(), t(0.0, -1e-9), beta=1.0),
        lambda x: orpo_loss(x, t(-1e4, 0.0), beta=1.0),  # logp > 0 is clamped, not NaN
        lambda x: kto_loss(x, zeros, torch.tensor([True, False]), 1e4, beta=1.0),
        lambda x: reward_model_loss(x, zeros, margin=1.0),
    ]
    for check in checks:
        x = big.clone().requires_grad_()
        losses = check(x)[0]
        assert torch.isfinite(losses).all(), losses
        losses.sum().backward()
        assert torch.isfinite(x.grad).all(), x.grad


# --- reference-free losses ----------------------------------------------------------------


def test_simpo_hand_values():
    """beta = 2, gamma = 1: avg_w = -0.5, avg_l = -1 -> x = 2 (0.5) - 1 = 0 -> log 2;
    avg_w = -1, avg_l = -1 -> x = -1 -> log(1 + e) = A + 1. Rewards beta * avg.
    """
    losses, chosen, rejected = simpo_loss(t(-0.5, -1.0), t(-1.0, -1.0), beta=2.0, gamma=1.0)
    torch.testing.assert_close(losses, t(LOG2, A + 1))
    torch.testing.assert_close(chosen, t(-1.0, -2.0))
    torch.testing.assert_close(rejected, t(-2.0, -2.0))


def test_orpo_hand_values():
    """p_w = 0.5 -> odds 1, log odds 0; p_l = 0.2 -> odds 0.25, log odds -log 4.

    Log odds ratio = log 4; loss = beta * log(1 + 1/4) = 0.1 * log 1.25.
    """
    losses, chosen, _, ratio = orpo_loss(t(math.log(0.5)), t(math.log(0.2)), beta=0.1)
    torch.testing.assert_close(ratio, t(math.log(4.0)))
    torch.testing.assert_close(losses, t(0.1 * math.log(1.25)))
    torch.testing.assert_close(chosen, t(0.1 * math.log(0.5)))


def test_log_odds_stable_near_zero_and_one():
    """Float32 stable log odds vs float64 log(p / (1 - p)); p = 1 stays finite."""
    logp = torch.tensor([-50.0, -5.0, -0.7, -0.6, -1e-3, -1e-6], dtype=torch.float64)
    expected = logp - torch.log(-torch.expm1(logp))
    torch.testing.assert_close(log_odds(logp.float()).double(), expected, rtol=1e-4, atol=1e-4)
    at_one = log_odds(torch.zeros(1))
    assert torch.isfinite(at_one).all() and at_one.item() > 10


# --- KTO and the reward model --------------------------------------------------------------


def test_kto_desirable_undesirable_and_weights():
    """beta = 0.5, w_D = 2, w_U = 3, r = 1 for both examples.

    kl_estimate = -3 is clamped to z0 = 0: desirable 2 (1 - sigmoid(0.5)) = 2 sigmoid(-0.5),
    undesirable 3 (1 - sigmoid(-0.5)) = 3 sigmoid(0.5).
    kl_estimate = 1 = r: both arguments are 0, losses 2 * 0.5 = 1 and 3 * 0.5 = 1.5.
    Raising r lowers the desirable loss and raises the undesirable one; no gradient reaches
    the KL estimate.
    """
    s = torch.sigmoid
    policy = t(1.0, 1.0).requires_grad_()
    ref = torch.zeros(2)
    desirable = torch.tensor([True, False])
    kl = torch.tensor(-3.0, requires_grad=True)
    kw = dict(beta=0.5, desirable_weight=2.0, undesirable_weight=3.0)
    losses, rewards = kto_loss(policy, ref, desirable, kl, **kw)
    torch.testing.assert_close(losses, torch.stack([2 * s(t(-0.5))[0], 3 * s(t(0.5))[0]]))
    torch.testing.assert_close(rewards, t(0.5, 0.5))
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]
    assert kl.grad is None
    losses = kto_loss(policy, ref, desirable, torch.tensor(1.0), **kw)[0]
    torch.testing.assert_close(losses.detach(), t(1.0, 1.5))


def test_reward_model_loss_with_margin():
    """r_w - r_l = (1, 0). No margin: (log(1 + e^-1), log 2) = (A, log 2).
    Margin (1, 0): logits (0, 0) -> (log 2, log 2). Score margins come back as (1, 0).
    """
    chosen, rejected = t(2.0, 0.0), t(1.0, 0.0)
    losses, margins = reward_model_loss(chosen, rejected)
    torch.testing.assert_close(losses, t(A, LOG2))
    torch.testing.assert_close(margins, t(1.0, 0.0))
    torch.testing.assert_close(
        reward_model_loss(chosen, rejected, margin=t(1.0, 0.0))[0], t(LOG2, LOG2)
    )


# --- GAE, whitening, PPO -------------------------------------------------------------------


def _gae_loop(rewards, values, mask, gamma, lam):
    """Plain Python: for each row, run the recursion over its valid tokens only."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [i for i in range(T) if mask[b][i]]
        last, next_v = 0.0, 0.0
        for i in reversed(idx):
            delta = rewards[b][i] + gamma * next_v - values[b][i]
            last = delta + gamma * lam * last
            adv[b][i] = last
            ret[b][i] = last + values[b][i]
            next_v = values[b][i]
    return adv, ret


def test_gae_matches_python_loop_with_ragged_masks():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, :9] = True  # full
    mask[1, :4] = True  # right padded
    mask[2, 3:] = True  # left padded
    mask[3, [0, 2, 3, 7]] = True  # holes
    mask[4, 2:6] = True  # both sides
    # row 5: empty
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)]:
        adv, ret = gae(rewards, values, mask, gamma=gamma, gae_lambda=lam)
        ea, er = _gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        torch.testing.assert_close(adv, torch.tensor(ea, dtype=torch.float64))
        torch.testing.assert_close(ret, torch.tensor(er, dtype=torch.float64))


def test_gae_hand_values():
    """gamma = lambda = 1: A_t = (sum of rewards from t on) - V_t; returns = reward-to-go.
    Rewards (0, 0, 1), values (0.5, 0.5, 0.5), last position padded:
    valid tokens 0, 1 -> reward-to-go (0, 0), advantages (-0.5, -0.5), padded 0.
    """
    adv, ret = gae(
        t(0, 0, 1)[None],
        t(0.5, 0.5, 0.5)[None],
        torch.tensor([[1, 1, 0]]),
        gamma=1.0,
        gae_lambda=1.0,
    )
    torch.testing.assert_close(adv, t(-0.5, -0.5, 0.0)[None])
    torch.testing.assert_close(ret, t(0.0, 0.0, 0.0)[None])


def test_whiten_masked_mean_zero_var_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, generator=g, dtype=torch.float64) * 3 + 7
    mask = torch.rand(4, 10, generator=g) > 0.4
    x[~mask] = 1e6  # garbage at padding must not move the statistics
    w = whiten(x, mask)
    assert torch.all(w[~mask] == 0)
    valid = w[mask]
    torch.testing.assert_close(valid.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(valid.var(), torch.tensor(1.0, dtype=torch.float64))
    kept = whiten(x, mask, shift_mean=False)[mask]
    torch.testing.assert_close(kept.mean(), x[mask].mean())
    torch.testing.assert_close(kept.var(), torch.tensor(1.0, dtype=torch.float64))


def test_ppo_policy_loss_hand_values_with_clipping_both_sides():
    """clip_range 0.2. Per token (ratio, A) -> max(-A r, -A clip(r)):

    (1.5, +1) -> max(-1.5, -1.2) = -1.2  clipped (upper side)
    (0.5, +1) -> max(-0.5, -0.8) = -0.5
    (0.5, -1) -> max( 0.5,  0.8) =  0.8  clipped (lower side)
    (1.5, -1) -> max( 1.5,  1.2) =  1.5
    (1.0, +2) -> -2
    (masked, ratio e^3, A = 100) -> ignored
    loss = (-1.2 - 0.5 + 0.8 + 1.5 - 2) / 5 = -0.28; clipfrac 2/5.
    approxkl = 0.5 * (2 log(1.5)^2 + 2 log(0.5)^2) / 5.
    d loss / d logp = -A r / 5 on unclipped tokens: (0, -0.1, 0, 0.3, -0.4), clipped 0.
    """
    ratios = t(1.5, 0.5, 0.5, 1.5, 1.0, math.exp(3))
    old = t(-1.0, -2.0, -1.0, -3.0, -0.5, -1.0)
    logp = (old + ratios.log()).requires_grad_()
    adv = t(1.0, 1.0, -1.0, -1.0, 2.0, 100.0)
    mask = torch.tensor([1, 1, 1, 1, 1, 0])
    loss, stats = ppo_policy_loss(logp[None], old[None], adv[None], mask[None], clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor(-0.28))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.4))
    kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 5
    torch.testing.assert_close(stats["approxkl"], torch.tensor(kl))
    loss.backward()
    torch.testing.assert_close(logp.grad, t(0.0, -0.1, 0.0, 0.3, -0.4, 0.0))


def test_ppo_value_loss_clipping():
    """clip 0.5, old values 0, so v_clip = clip(v, -0.5, 0.5). Per token (v, R):

    (1, 2):     (1-2)^2 = 1 vs (0.5-2)^2 = 2.25 -> 2.25 clipped
    (1, 0):     1 vs 0.25 -> 1
    (-0.2, 1):  v_clip = v, 1.44 vs 1.44 -> 1.44, not counted as clipped
    (-1, -3):   4 vs (-0.5+3)^2 = 6.25 -> 6.25 clipped
    loss = 0.5 * (2.25 + 1 + 1.44 + 6.25) / 4 = 1.3675; clipfrac 0.5.
    grads: clipped tokens 0 (v_clip saturated); else (v - R) / 4 -> (0, 0.25, -0.3, 0).
    """
    v = t(1.0, 1.0, -0.2, -1.0).requires_grad_()
    R = t(2.0, 0.0, 1.0, -3.0)
    loss, stats = ppo_value_loss(
        v[None], torch.zeros(1, 4), R[None], torch.ones(1, 4), clip_range_value=0.5
    )
    torch.testing.assert_close(loss, torch.tensor(1.3675))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.5))
    loss.backward()
    torch.testing.assert_close(v.grad, t(0.0, 0.25, -0.3, 0.0))


def test_kl_estimators():
    """Hand: logp = 0, ref = log 2 (r = 2): k1 = -log 2, k2 = (log 2)^2 / 2, k3 = 1 - log 2.

    Monte Carlo: tokens sampled from p; the means of k1 and k3 estimate KL(p || q) > 0; k3 >= 0
    token by token.
    """
    lp, rp = t(0.0), t(LOG2)
    torch.testing.assert_close(kl_per_token(lp, rp, "k1"), t(-LOG2))
    torch.testing.assert_close(kl_per_token(lp, rp, "k2"), t(LOG2**2 / 2))
    torch.testing.assert_close(kl_per_token(lp, rp, "k3"), t(1 - LOG2))
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(20, generator=g, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.randn(20, generator=g, dtype=torch.float64), -1)
    exact = (p.exp() * (p - q)).sum()
    idx = torch.multinomial(p.exp(), 200_000, replacement=True, generator=g)
    k1 = kl_per_token(p[idx], q[idx], "k1")
    k3 = kl_per_token(p[idx], q[idx], "k3")
    assert (k1 < 0).any() and (k3 >= 0).all()
    assert exact > 0 and k1.mean() > 0
    torch.testing.assert_close(k1.mean(), exact, rtol=0.05, atol=0.0)
    torch.testing.assert_close(k3.mean(), exact, rtol=0.05, atol=0.0)
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(lp, rp, "k4")


# --- the registry --------------------------------------------------------------------------


def test_registry_names_and_fields():
    assert list(DIRECT_LOSSES) == ["sigmoid", "cdpo", "ipo", "hinge", "robust", "simpo", "cpo",
                                   "orpo"]
    for name, spec in DIRECT_LOSSES.items():
        assert get_direct_loss(name) is spec and spec.name == name
        assert spec.logps in ("sum", "mean") and spec.paired and spec.description
    assert get_direct_loss("ipo").logps == "mean"
    for name in ("simpo", "orpo"):
        spec = get_direct_loss(name)
        assert not spec.needs_reference and spec.logps == "mean"
    assert get_direct_loss("orpo").adds_sft_term
    assert [n for n, s in DIRECT_LOSSES.items() if s.adds_sft_term] == ["cpo", "orpo"]


def test_unknown_loss_raises_config_error_listing_names():
    with pytest.raises(ConfigError) as info:
        get_direct_loss("dpo++")
    for name in DIRECT_LOSSES:
        assert name in str(info.value)
    assert info.value.field == "loss"


def test_compute_direct_loss_matches_functions_and_cdpo_zero_is_sigmoid():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(5, generator=g) * 10 for _ in range(4))
    kw = dict(
        policy_chosen_logps=pc,
        policy_rejected_logps=pr,
        ref_chosen_logps=rc,
        ref_rejected_logps=rr,
        beta=0.2,
    )
    sigmoid = compute_direct_loss(get_direct_loss("sigmoid"), **kw)
    cdpo0 = compute_direct_loss(get_direct_loss("cdpo"), **kw, label_smoothing=0.0)
    torch.testing.assert_close(cdpo0.losses, sigmoid.losses)
    torch.testing.assert_close(sigmoid.losses, dpo_loss(pc, pr, rc, rr, beta=0.2)[0])
    robust = compute_direct_loss(get_direct_loss("robust"), **kw, label_smoothing=0.1)
    torch.testing.assert_close(
        robust.losses, robust_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=0.1)[0]
    )
    simpo = compute_direct_loss(get_direct_loss("simpo"), **kw, gamma=0.5)
    torch.testing.assert_close(simpo.losses, simpo_loss(pc, pr, beta=0.2, gamma=0.5)[0])
    torch.testing.assert_close(simpo.chosen_rewards, 0.2 * pc)


def test_compute_direct_loss_never_needs_reference_for_simpo_orpo():
    pc, pr = t(-0.5, -1.0), t(-2.0, -0.2)
    for name in ("simpo", "orpo"):
        out = compute_direct_loss(
            get_direct_loss(name), policy_chosen_logps=pc, policy_rejected_logps=pr, beta=0.1
        )
        assert out.losses.shape == (2,) and torch.isfinite(out.losses).all()
        torch.testing.assert_close(out.rejected_rewards, 0.1 * pr)
    orpo = compute_direct_loss(
        get_direct_loss("orpo"), policy_chosen_logps=pc, policy_rejected_logps=pr, beta=0.1
    )
    assert set(orpo.extras) == {"log_odds_ratio"}
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        compute_direct_loss(
            get_direct_loss("ipo"), policy_chosen_logps=pc, policy_rejected_logps=pr, beta=0.1
        )


def test_compute_direct_loss_rejects_settings_a_loss_ignores():
    z = torch.zeros(2)
    kw = dict(
        policy_chosen_logps=z,
        policy_rejected_logps=z,
        ref_chosen_logps=z,
        ref_rejected_logps=z,
        beta=0.1,
    )
    with pytest.raises(ConfigError, match="label_smoothing"):
        compute_direct_loss(get_direct_loss("sigmoid"), **kw, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="gamma"):
        compute_direct_loss(get_direct_loss("ipo"), **kw, gamma=1.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        compute_direct_loss(get_direct_loss("robust"), **kw, label_smoothing=0.5)
    with pytest.raises(ConfigError, match="beta"):
        compute_direct_loss(get_direct_loss("sigmoid"), **{**kw, "beta": 0.0})


def test_import_is_light():
    code = "import preflab.losses, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
