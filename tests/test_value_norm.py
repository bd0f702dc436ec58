"""--value-norm (the critic learns standardised returns; Yu et al. 2022, Sec. 2.3): its running moments and what
PPO's value loss sees. Each script stands alone and carries its own ValueNorm and ppo_update (the design), so each
rule here runs once per script: a copy that drifts from the others fails under its own name."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# script -> the number of its discrete actions
SCRIPTS = {"grid_failmem": lambda s: len(s.MOVES), "miniworld_failmem": lambda s: len(s.ACTION_NAMES),
           "reacher_failmem": lambda s: len(s.MOVES)}


@pytest.fixture(params=sorted(SCRIPTS))
def script(request):
    return importlib.import_module(request.param)


def test_value_norm_moments_are_a_debiased_average_over_updates_and_start_as_the_identity(script):
    norm = script.ValueNorm(decay=0.9)
    values = torch.tensor([[-1.0, 2.0, 7.5]])
    assert torch.equal(norm.normalize(values), values) and torch.equal(norm.denormalize(values), values)
    batches = [torch.tensor([1.0, 3.0]), torch.tensor([10.0, 10.0, 16.0]), torch.tensor([[-2.0, 0.0], [4.0, 6.0]])]
    for batch in batches:
        norm.update(batch)
    weights = np.array([0.9**2, 0.9, 1.0]) * 0.1
    mean = sum(w * b.double().mean().item() for w, b in zip(weights, batches)) / weights.sum()
    square = sum(w * b.double().square().mean().item() for w, b in zip(weights, batches)) / weights.sum()
    got_mean, got_std = norm.mean_std()
    assert got_mean.item() == pytest.approx(mean, rel=1e-6)
    assert got_std.item() == pytest.approx((square - mean**2) ** 0.5, rel=1e-6)
    assert torch.allclose(norm.normalize(values), (values - mean) / got_std)
    assert torch.allclose(norm.denormalize(norm.normalize(values)), values, atol=1e-5)


def test_value_norm_gives_values_in_return_units_and_the_value_loss_in_standard_deviations(script):
    """The critic's output is standardised: the agent's values are it times the returns' std plus their mean, and
    PPO's value loss compares it with the standardised returns (the moments updated once, with this batch)."""
    torch.manual_seed(0)
    args = script.Args(obs_size=16, trial_len=12, mem_size=3, mem_len=4, embed_dim=16, num_heads=4, agent="ppo-finetune",
                       value_norm=True, trials_per_minibatch=4, update_epochs=1, clip_vloss=False)
    num_actions = SCRIPTS[script.__name__](script)
    agent = script.Agent(args, num_actions)
    B, T = 4, args.trial_len
    frames = torch.randint(0, 256, (B, T, args.obs_size, args.obs_size, 3), dtype=torch.uint8)
    zeros, actions = torch.zeros(B, T), torch.randint(0, num_actions, (B, T))
    returns = 10.0 + 5.0 * torch.randn(B, T)
    with torch.no_grad():  # before any update the moments are the identity: these are the critic's raw outputs
        _, logprobs, _, raw = agent.get_action_and_value(frames, actions, zeros, zeros, [], actions)
    batch = dict(frames=frames, prev_actions=actions, prev_rewards=zeros, starts=zeros, banks=[], actions=actions,
                 logprobs=logprobs, advantages=torch.randn(B, T), returns=returns, values=raw)
    stats = script.ppo_update(agent, torch.optim.Adam(agent.parameters(), lr=0.0), args, batch, "cpu")
    mean, std = agent.value_norm.mean_std()
    assert mean.item() == pytest.approx(returns.mean().item(), rel=1e-5)
    assert std.item() == pytest.approx(returns.std(unbiased=False).item(), rel=1e-4)
    assert stats["value_loss"] == pytest.approx((0.5 * (raw - (returns - mean) / std).square().mean()).item(), rel=1e-4)
    with torch.no_grad():
        after = agent.get_action_and_value(frames, actions, zeros, zeros, [], actions)[3]
    assert torch.allclose(after, raw * std + mean, atol=1e-4)  # the weights did not move (lr 0); the moments did
