"""Unit tests of the neural blocks in common.py (paper Sec. 2, DESIGN.md Sec. 3).

Small dimensions everywhere so the whole file runs in a few seconds on CPU.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    SNAIL,
    CausalAttentionBlock,
    DenseTCBlock,
    ImpalaCNN,
    MemoryReader,
    ResidualBlock,
    TrajectoryEmbedding,
    layer_init,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def random_frames(*lead, size):
    return torch.randint(0, 256, (*lead, size, size, 3), dtype=torch.uint8)


# --------------------------------------------------------------------------------------------
# ImpalaCNN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obs_size, final_size", [(64, 8), (16, 2)])
def test_impala_output_shape(obs_size, final_size):
    cnn = ImpalaCNN(obs_size=obs_size)
    frames = random_frames(2, 3, size=obs_size)  # (B, T, H, W, 3) uint8
    with torch.no_grad():
        out = cnn(frames)
    assert out.shape == (2, 3, 256)
    assert out.dtype == torch.float32
    assert cnn.out_dim == 256
    # three halvings of the frame, 32 channels, into the FC
    assert cnn.fc.in_features == 32 * final_size * final_size
    assert (out >= 0).all()  # final ReLU
    # leading dims are only flattened: frame (b, t) alone gives the same features
    with torch.no_grad():
        single = cnn(frames[1, 2])
    assert single.shape == (256,)
    torch.testing.assert_close(single, out[1, 2], atol=1e-5, rtol=1e-5)


def test_impala_scales_uint8_to_centred_interval():
    """uint8 0..255 -> [-0.5, 0.5]: black is -0.5, so the convs' zero padding is not black."""
    cnn = ImpalaCNN(obs_size=16)
    frames = random_frames(2, 3, size=16)
    first_conv_input = []
    cnn.stages[0].register_forward_hook(lambda module, inputs, output: first_conv_input.append(inputs[0]))
    with torch.no_grad():
        out = cnn(frames)
        x = frames.reshape(-1, 16, 16, 3).float().permute(0, 3, 1, 2) / 255.0 - 0.5  # NHWC -> NCHW
        expected = F.relu(cnn.fc(F.relu(cnn.stages(x)).flatten(1))).reshape(2, 3, -1)
        # the same pipeline on [0, 1] gives something else: the check can fail
        uncentred = F.relu(cnn.fc(F.relu(cnn.stages(x + 0.5)).flatten(1))).reshape(2, 3, -1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, uncentred, atol=1e-3)
    with torch.no_grad():
        cnn(torch.tensor([[[[0, 255, 0]]]], dtype=torch.uint8).expand(1, 16, 16, 3))
    assert first_conv_input[-1].amin() == -0.5 and first_conv_input[-1].amax() == 0.5


def test_impala_structure_matches_design():
    cnn = ImpalaCNN(obs_size=64)
    stages = list(cnn.stages)
    assert len(stages) == 12  # 3 stages x (conv, pool, res, res)
    expected_channels = [16, 32, 32]
    in_channels = 3
    for s, out_channels in enumerate(expected_channels):
        conv, pool, res0, res1 = stages[4 * s : 4 * s + 4]
        assert isinstance(conv, nn.Conv2d)
        assert conv.in_channels == in_channels and conv.out_channels == out_channels
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert isinstance(pool, nn.MaxPool2d)
        assert pool.kernel_size == 3 and pool.stride == 2
        for res in (res0, res1):
            assert isinstance(res, ResidualBlock)
            for c in (res.conv0, res.conv1):
                assert c.in_channels == c.out_channels == out_channels
                assert c.kernel_size == (3, 3) and c.padding == (1, 1)
        in_channels = out_channels
    assert sum(isinstance(m, nn.MaxPool2d) for m in cnn.modules()) == 3
    assert sum(isinstance(m, ResidualBlock) for m in cnn.modules()) == 6
    assert isinstance(cnn.fc, nn.Linear) and cnn.fc.out_features == 256

    # spatial sizes through the stages: each max-pool halves 64 -> 32 -> 16 -> 8
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:]))) for m in stages if isinstance(m, nn.MaxPool2d)]
    with torch.no_grad():
        cnn(random_frames(1, size=64))
    for hook in hooks:
        hook.remove()
    assert sizes == [(16, 32, 32), (32, 16, 16), (32, 8, 8)]


def test_residual_block_hand_computation():
    block = ResidualBlock(4)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = x + block.conv1(torch.relu(block.conv0(torch.relu(x))))
        torch.testing.assert_close(block(x), expected)


# --------------------------------------------------------------------------------------------
# SNAIL: TC blocks, attention blocks, whole network, step mode
# --------------------------------------------------------------------------------------------

IN_DIM, SEQ_LEN = 6, 80


def small_snail(seq_len=SEQ_LEN):
    return SNAIL(IN_DIM, 12, seq_len=seq_len, filters=4, key_size=8, value_size=5)


def test_snail_output_shape():
    snail = small_snail()
    x = torch.randn(3, SEQ_LEN, IN_DIM)
    with torch.no_grad():
        out = snail(x)
    assert out.shape == (3, SEQ_LEN, 12)
    # shorter and longer trials than seq_len work in forward too
    with torch.no_grad():
        assert snail(x[:, :7]).shape == (3, 7, 12)
        assert snail(torch.randn(2, 150, IN_DIM)).shape == (2, 150, 12)


def test_tc_block_dilations_and_kernel():
    tc = DenseTCBlock(IN_DIM, 80, filters=4)
    assert tc.dilations == [1, 2, 4, 8, 16, 32, 64]
    assert tc.out_dim == IN_DIM + 7 * 4
    for k, conv in enumerate(tc.convs):
        assert conv.kernel_size == (2,)
        assert conv.in_channels == IN_DIM + 4 * k
        assert conv.out_channels == 2 * 4  # both halves of the gate
    # other trial lengths: dilations double up to T
    assert DenseTCBlock(3, 400, 2).dilations == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert DenseTCBlock(3, 64, 2).dilations[-1] == 32
    # the receptive field 1 + sum(dilations) covers the whole trial of 80 steps:
    # the first step still reaches the last output
    x = torch.randn(1, 80, IN_DIM)
    x2 = x.clone()
    x2[:, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(tc(x)[:, 79], tc(x2)[:, 79])


def test_tc_block_gate_hand_computation():
    """Every layer k: new channels at t = tanh(f) * sigmoid(g), [f, g] = W0 h[t - 2^k] + W1 h[t] + b
    (h[t - d] = 0 before the start), concatenated to the layer input."""
    filters, T = 3, 12
    tc = DenseTCBlock(4, T, filters)  # dilations 1, 2, 4, 8
    x = torch.randn(2, T, 4)
    with torch.no_grad():
        out = tc(x)
        h = x
        for k, conv in enumerate(tc.convs):
            d = 2**k
            w0, w1, b = conv.weight[:, :, 0], conv.weight[:, :, 1], conv.bias
            new = torch.zeros(2, T, filters)
            for t in range(T):
                past = h[:, t - d] if t >= d else torch.zeros_like(h[:, t])
                pre = past @ w0.T + h[:, t] @ w1.T + b
                f, g = pre[:, :filters], pre[:, filters:]
                new[:, t] = torch.tanh(f) * torch.sigmoid(g)
            h = torch.cat([h, new], dim=-1)
    assert out.shape == (2, T, 4 + 4 * filters)
    torch.testing.assert_close(out, h, atol=1e-6, rtol=1e-5)
    # the input passes through unchanged in the first channels (dense concat)
    torch.testing.assert_close(out[..., :4], x)


def test_attention_block_hand_computation():
    """Single head, softmax over keys masked to positions <= t, scaled by 1/sqrt(key_size)."""
    block = CausalAttentionBlock(3, key_size=2, value_size=2)
    T = 4
    x = torch.randn(2, T, 3)
    with torch.no_grad():
        out = block(x)
        q, k, v = block.query(x), block.key(x), block.value(x)
        expected = torch.zeros(2, T, 2)
        for b in range(2):
            for t in range(T):
                logits = torch.tensor([float(q[b, t] @ k[b, j]) / math.sqrt(2) for j in range(t + 1)])
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                expected[b, t] = sum(weights[j] * v[b, j] for j in range(t + 1))
    assert out.shape == (2, T, 5)
    torch.testing.assert_close(out[..., :3], x)
    torch.testing.assert_close(out[..., 3:], expected, atol=1e-6, rtol=1e-5)
    # position 0 can only read itself
    torch.testing.assert_close(out[:, 0, 3:], v[:, 0])


def _assert_causal(fn, x, ts):
    with torch.no_grad():
        base = fn(x)
        for t in ts:
            x2 = x.clone()
            x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3.0
            out2 = fn(x2)
            torch.testing.assert_close(out2[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-5)
            # and the input at t itself does matter at t (the check is not vacuous)
            x3 = x.clone()
            x3[:, t] += 1.0
            assert not torch.allclose(fn(x3)[:, t], base[:, t], atol=1e-6)


CAUSAL_TS = [0, 1, 5, 31, 40, 78]


def test_tc_block_is_causal():
    tc = DenseTCBlock(IN_DIM, SEQ_LEN, filters=4)
    _assert_causal(tc, torch.randn(2, SEQ_LEN, IN_DIM), CAUSAL_TS)


def test_attention_block_is_causal():
    block = CausalAttentionBlock(IN_DIM, key_size=8, value_size=5)
    _assert_causal(block, torch.randn(2, SEQ_LEN, IN_DIM), CAUSAL_TS)


def test_snail_is_causal():
    snail = small_snail()
    _assert_causal(snail, torch.randn(2, SEQ_LEN, IN_DIM), CAUSAL_TS)


@pytest.mark.parametrize("T", [SEQ_LEN, 400])
def test_snail_step_matches_forward(T):
    """Rollout mode: step t with the cache gives forward's output at t, also past seq_len."""
    snail = small_snail()
    B = 2
    x = torch.randn(B, T, IN_DIM)
    with torch.no_grad():
        full = snail(x)
        cache = snail.init_cache(B, T)
        steps = torch.stack([snail.step(x[:, t], cache, t) for t in range(T)], dim=1)
    assert steps.shape == full.shape == (B, T, 12)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_snail_cache_of_a_long_trial_is_bounded_by_the_largest_dilation():
    """RAM: the conv buffers of a 400-step test trial are as long as an 80-step one's (the largest
    dilation + 1); only the attention keys and values grow with the trial."""
    snail = small_snail()
    short, long = snail.init_cache(3, SEQ_LEN), snail.init_cache(3, 400)
    for tc in (0, 2):  # layers: TC, attention, TC, attention
        longest = snail.layers[tc].dilations[-1] + 1
        assert [b.shape for b in long["layers"][tc]] == [b.shape for b in short["layers"][tc]]
        assert all(b.shape[1] == min(SEQ_LEN, longest) for b in long["layers"][tc])
    assert long["layers"][1][0].shape[1] == 400


def test_block_steps_match_forward():
    T = 50
    x = torch.randn(2, T, IN_DIM)
    tc = DenseTCBlock(IN_DIM, 20, filters=3)  # trial longer than its seq_len
    attn = CausalAttentionBlock(IN_DIM, key_size=4, value_size=3)
    with torch.no_grad():
        history = [torch.zeros(2, T, c.in_channels) for c in tc.convs]
        tc_steps = torch.stack([tc.step(x[:, t], history, t) for t in range(T)], dim=1)
        torch.testing.assert_close(tc_steps, tc(x), atol=1e-5, rtol=1e-5)
        kv = attn.init_cache(2, T)
        assert kv[0].shape == (2, T, 4) and kv[1].shape == (2, T, 3)
        attn_steps = torch.stack([attn.step(x[:, t], kv, t) for t in range(T)], dim=1)
        torch.testing.assert_close(attn_steps, attn(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# TrajectoryEmbedding
# --------------------------------------------------------------------------------------------

E = 16


def front_padded_valid(lengths, L):
    valid = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        valid[b, L - n :] = True
    return valid


def test_trajectory_embedding_shape():
    emb = TrajectoryEmbedding(embed_dim=E, num_heads=4, num_layers=2, max_len=10)
    steps = torch.randn(3, 10, E)
    valid = front_padded_valid([10, 4, 1], 10)
    out = emb(steps, valid)
    assert out.shape == (3, E)
    assert torch.isfinite(out).all()
    # shorter L than max_len also works
    assert emb(steps[:, -6:], valid[:, -6:]).shape == (3, E)


@pytest.mark.parametrize("train", [True, False])
def test_trajectory_embedding_ignores_front_padding(train):
    emb = TrajectoryEmbedding(embed_dim=E, num_heads=4, num_layers=2, max_len=10)
    emb.train(train)
    L = 10
    lengths = [10, 6, 3]
    steps = torch.randn(3, L, E)
    valid = front_padded_valid(lengths, L)
    with torch.no_grad():
        out = emb(steps, valid)
        # garbage in the padded steps changes nothing
        steps2 = steps.clone()
        steps2[~valid] = torch.randn(int((~valid).sum()), E) * 10.0
        torch.testing.assert_close(emb(steps2, valid), out, atol=1e-5, rtol=1e-5)
        # a padded trajectory embeds like the same trajectory given unpadded
        for b, n in enumerate(lengths):
            alone = emb(steps[b : b + 1, L - n :], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(alone[0], out[b], atol=1e-5, rtol=1e-5)
        # a valid step does change the output (not vacuous)
        steps3 = steps.clone()
        steps3[1, L - 1] += 1.0
        changed = emb(steps3, valid)
    assert not torch.allclose(changed[1], out[1], atol=1e-5)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]])


def test_trajectory_embedding_query_is_learned_g():
    emb = TrajectoryEmbedding(embed_dim=E, num_heads=4, num_layers=2, max_len=10)
    assert isinstance(emb.g, nn.Parameter) and emb.g.shape == (1, 1, E)
    assert any(p is emb.g for p in emb.parameters())
    steps = torch.randn(2, 10, E)
    valid = front_padded_valid([10, 5], 10)
    out = emb(steps, valid)
    # (not out.sum(): the decoder ends in LayerNorm, whose outputs sum to a constant)
    (out * torch.randn_like(out)).sum().backward()
    assert emb.g.grad is not None and emb.g.grad.abs().sum() > 0
    with torch.no_grad():
        emb.g.add_(torch.randn_like(emb.g))
        out2 = emb(steps, valid)
    assert not torch.allclose(out2, out.detach(), atol=1e-4)
    # g is shared across trajectories: the same steps give the same embedding in any batch slot
    with torch.no_grad():
        swapped = emb(steps.flip(0), valid.flip(0))
    torch.testing.assert_close(swapped.flip(0), out2, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# MemoryReader
# --------------------------------------------------------------------------------------------


def reader_inputs(B=3, Q=2, N=5):
    v_o = torch.randn(B, Q, E)
    memory = torch.randn(B, N, E)
    valid = torch.rand(B, N) < 0.6
    valid[:, 0] = True  # every bank non-empty here
    valid[0, 3] = False
    return v_o, memory, valid


def hand_multihead(attn, q_in, kv_in, valid):
    """nn.MultiheadAttention by hand: Q from the queries, K = V from the memory, invalid slots masked."""
    E_, H = attn.embed_dim, attn.num_heads
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    q = q_in @ wq.T + bq
    k = kv_in @ wk.T + bk
    v = kv_in @ wv.T + bv
    B, Q, N = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(B, Q, H, E_ // H).transpose(1, 2)
    k = k.reshape(B, N, H, E_ // H).transpose(1, 2)
    v = v.reshape(B, N, H, E_ // H).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(E_ // H)
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Q, E_)
    return attn.out_proj(out)


def test_memory_reader_gru_gate_hand_computation():
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, valid = reader_inputs()
    with torch.no_grad():
        out = reader(v_o, memory, valid)
        m_d = hand_multihead(reader.attention, v_o, memory, valid)
        m_d_module, _ = reader.attention(v_o, memory, memory, key_padding_mask=~valid)
        torch.testing.assert_close(m_d, m_d_module, atol=1e-5, rtol=1e-5)
        r = torch.sigmoid(reader.w_r(m_d) + reader.u_r(v_o))
        z = torch.sigmoid(reader.w_z(m_d) + reader.u_z(v_o))
        y = torch.tanh(reader.w_y(m_d) + reader.u_y(r * v_o))
        expected = (1 - z) * y + z * v_o
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # six distinct FC layers (each FC its own weights)
    linears = [reader.w_r, reader.u_r, reader.w_z, reader.u_z, reader.w_y, reader.u_y]
    assert len({id(layer.weight) for layer in linears}) == 6
    # the gate really is sensitive to each of them: perturbing z's FC changes the output
    with torch.no_grad():
        reader.u_z.bias.add_(1.0)
        assert not torch.allclose(reader(v_o, memory, valid), out, atol=1e-4)


def test_memory_reader_null_slot_is_a_learned_slot_always_in_the_bank():
    torch.manual_seed(0)
    reader = MemoryReader(embed_dim=E, num_heads=4, null_slot=True)
    plain = MemoryReader(embed_dim=E, num_heads=4)
    plain.load_state_dict({k: v for k, v in reader.state_dict().items() if k != "null"})
    with torch.no_grad():
        reader.null.normal_()
    v_o, memory, valid = reader_inputs(B=3)
    valid[1] = False  # an empty bank
    with torch.no_grad():
        out = reader(v_o, memory, valid)
        # the same as the paper's reader over a bank whose slot 0 holds the null embedding, valid everywhere
        with_null = torch.cat([reader.null.expand(3, -1, -1), memory], 1)
        expected = plain(v_o, with_null, torch.cat([torch.ones(3, 1, dtype=torch.bool), valid], 1))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # an empty bank reads the null slot alone: not zero, and the same whatever the empty slots hold
        assert out[1].abs().sum() > 0
        other = memory.clone()
        other[1] = torch.randn(5, E)
        torch.testing.assert_close(reader(v_o, other, valid)[1], out[1])
        # per-query validity (a bank that grows in a trial) takes the null slot for every query
        per_query = valid[:, None, :].expand(-1, v_o.shape[1], -1)
        torch.testing.assert_close(reader(v_o, memory, per_query), out)
    assert "null" in dict(reader.named_parameters()) and "null" not in dict(plain.named_parameters())


def test_memory_reader_empty_bank_is_zero_with_finite_grads():
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, valid = reader_inputs(B=3)
    valid[1] = False  # batch entry 1 has an empty bank
    v_o.requires_grad_(True)
    memory.requires_grad_(True)
    out = reader(v_o, memory, valid)
    assert out.shape == v_o.shape
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    assert (out[[0, 2]].abs() > 0).any()
    # the non-empty entries are what they would be alone
    with torch.no_grad():
        for b in (0, 2):
            alone = reader(v_o[b : b + 1], memory[b : b + 1], valid[b : b + 1])
            torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-5)
    (out**2).sum().backward()
    for name, p in reader.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(v_o.grad).all() and torch.isfinite(memory.grad).all()
    assert (v_o.grad[1] == 0).all() and (memory.grad[1] == 0).all()
    assert v_o.grad[0].abs().sum() > 0

    # a batch where every bank is empty
    valid_none = torch.zeros_like(valid)
    v_o.grad = None
    out = reader(v_o, memory, valid_none)
    assert (out == 0).all()
    out.sum().backward()
    assert torch.isfinite(v_o.grad).all()


def test_memory_reader_invariant_to_slot_order():
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, valid = reader_inputs(N=6)
    with torch.no_grad():
        out = reader(v_o, memory, valid)
        for _ in range(3):
            perm = torch.randperm(6)
            torch.testing.assert_close(reader(v_o, memory[:, perm], valid[:, perm]), out, atol=1e-5, rtol=1e-5)
        # permuting the memory without the mask is a different bank: the check is not vacuous
        perm = torch.tensor([5, 4, 3, 2, 1, 0])
        assert not torch.allclose(reader(v_o, memory[:, perm], valid), out, atol=1e-5)


def test_memory_reader_reads_shares_of_the_bank_not_counts():
    """Softmax attention with no slot positions: a bank holding every trajectory k times reads as the bank
    (a training level's FIFO full of repeats is the test's short bank to the reader); unequal repeats do not."""
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory = torch.randn(2, 2, E), torch.randn(2, 2, E)  # two queries, two trajectories a bank
    every = torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        out = reader(v_o, memory, every)
        for copies in (2, 4):
            torch.testing.assert_close(reader(v_o, memory.repeat(1, copies, 1), every.repeat(1, copies)), out,
                                       atol=1e-5, rtol=1e-5)
        skewed = torch.cat([memory[:, :1].expand(-1, 7, -1), memory[:, 1:]], 1)  # the first seven times, the second once
        assert not torch.allclose(reader(v_o, skewed, torch.ones(2, 8, dtype=torch.bool)), out, atol=1e-4)


def test_memory_reader_ignores_invalid_slots():
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, valid = reader_inputs(N=6)
    assert (~valid).any()
    with torch.no_grad():
        out = reader(v_o, memory, valid)
        memory2 = memory.clone()
        memory2[~valid] = torch.randn(int((~valid).sum()), E) * 10.0
        torch.testing.assert_close(reader(v_o, memory2, valid), out, atol=1e-5, rtol=1e-5)
        # same as a bank holding only the valid slots
        for b in range(v_o.shape[0]):
            kept = memory[b : b + 1, valid[b]]
            alone = reader(v_o[b : b + 1], kept, torch.ones(1, kept.shape[1], dtype=torch.bool))
            torch.testing.assert_close(alone, out[b : b + 1], atol=1e-5, rtol=1e-5)
        # a valid slot does matter
        memory3 = memory.clone()
        memory3[valid] += 1.0
        assert not torch.allclose(reader(v_o, memory3, valid), out, atol=1e-5)


@pytest.mark.parametrize("Q", [1, 7])
def test_memory_reader_query_shape(Q):
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, valid = reader_inputs(B=2, Q=Q, N=4)
    with torch.no_grad():
        out = reader(v_o, memory, valid)
        assert out.shape == (2, Q, E)
        # each query reads the bank independently of the others
        one = reader(v_o[:, -1:], memory, valid)
    torch.testing.assert_close(one, out[:, -1:], atol=1e-5, rtol=1e-5)


def test_memory_reader_per_query_slots():
    """valid (B, Q, N): each query reads only its own slots, as one call per query would; a query
    that sees no slot gets 0 (a bank that grows during a trial)."""
    reader = MemoryReader(embed_dim=E, num_heads=4)
    v_o, memory, _ = reader_inputs(B=2, Q=3, N=4)
    per_query = torch.zeros(2, 3, 4, dtype=torch.bool)
    per_query[:, 1, :2] = True
    per_query[:, 2, 1:] = True
    per_query[1, 2, :] = False
    with torch.no_grad():
        out = reader(v_o, memory, per_query)
        for q in range(3):
            alone = reader(v_o[:, q : q + 1], memory, per_query[:, q])
            torch.testing.assert_close(out[:, q : q + 1], alone, atol=1e-5, rtol=1e-5)
        # the same mask for every query equals the (B, N) form
        shared = per_query[:, 1]
        torch.testing.assert_close(reader(v_o, memory, shared[:, None].expand(-1, 3, -1)),
                                   reader(v_o, memory, shared), atol=1e-6, rtol=1e-6)
    assert (out[:, 0] == 0).all() and (out[1, 2] == 0).all()
    assert (out[0, 2] != 0).any()


# --------------------------------------------------------------------------------------------
# layer_init
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_f, out_f", [(32, 8), (8, 32), (12, 12)])
@pytest.mark.parametrize("std, bias", [(0.5, 0.3), (0.01, 0.0)])
def test_layer_init_orthogonal_scale_and_bias(in_f, out_f, std, bias):
    layer = nn.Linear(in_f, out_f)
    returned = layer_init(layer, std=std, bias_const=bias)
    assert returned is layer
    W = layer.weight.detach().double()
    # orthogonal rows (out <= in) or columns (out >= in), scaled by std
    gram = W @ W.T if out_f <= in_f else W.T @ W
    torch.testing.assert_close(gram, std**2 * torch.eye(min(in_f, out_f), dtype=torch.float64), atol=1e-5, rtol=1e-4)
    assert (layer.bias == bias).all()


def test_layer_init_default_std_sqrt2_zero_bias():
    layer = layer_init(nn.Linear(20, 10))
    W = layer.weight.detach().double()
    torch.testing.assert_close(W @ W.T, 2.0 * torch.eye(10, dtype=torch.float64), atol=1e-5, rtol=1e-4)
    assert (layer.bias == 0).all()


@pytest.mark.parametrize("blocks", [1, 2])
def test_snail_restart_equals_a_fresh_sequence(blocks):
    """Test history 'episode': after `restart(rows, s)` a row's outputs at s.. are those of a
    sequence that began at s (TC buffers zeroed, attention masked to positions >= s); the other
    rows go on unchanged."""
    snail = SNAIL(IN_DIM, 12, seq_len=SEQ_LEN, filters=4, key_size=8, value_size=5, blocks=blocks)
    T, s = 30, 11
    x = torch.randn(2, T, IN_DIM)
    with torch.no_grad():
        cache = snail.init_cache(2, T)
        outputs = []
        for t in range(T):
            if t == s:
                snail.restart(cache, torch.tensor([0]), t)
            outputs.append(snail.step(x[:, t], cache, t))
        outputs = torch.stack(outputs, 1)
        fresh = snail(x[:1, s:])
        whole = snail(x[1:])
    torch.testing.assert_close(outputs[0, s:], fresh[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[1], whole[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outputs[0, s:], snail(x[:1])[0, s:], atol=1e-3)  # the restart changed row 0


@pytest.mark.parametrize("blocks", [1, 2])
def test_snail_over_episodes_equals_each_episode_alone_and_its_steps(blocks):
    """Training history 'episode': `forward(x, episode_starts)` gives every episode the outputs of
    a sequence of its own, and the same numbers as `step` with `restart` at each episode start."""
    snail = SNAIL(IN_DIM, 12, seq_len=SEQ_LEN, filters=4, key_size=8, value_size=5, blocks=blocks)
    T = 30
    x = torch.randn(2, T, IN_DIM)
    starts = torch.zeros(2, T)
    starts[:, 0] = 1
    starts[0, [5, 6, 20]] = 1  # a one-step episode among them
    starts[1, 13] = 1
    with torch.no_grad():
        whole = snail(x, starts)
        cache = snail.init_cache(2, T)
        stepped = []
        for t in range(T):
            rows = torch.nonzero(starts[:, t]).flatten()
            if t and len(rows):
                snail.restart(cache, rows, t)
            stepped.append(snail.step(x[:, t], cache, t))
        stepped = torch.stack(stepped, 1)
        for row, bounds in ((0, [0, 5, 6, 20, T]), (1, [0, 13, T])):
            for begin, end in zip(bounds[:-1], bounds[1:]):
                alone = snail(x[row : row + 1, begin:end])[0]
                torch.testing.assert_close(whole[row, begin:end], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, stepped, atol=1e-5, rtol=1e-5)
    # and without episode starts the history crosses them
    assert not torch.allclose(whole[0, 20:], snail(x)[0, 20:], atol=1e-3)


def test_snail_blocks_and_impala_blocks_set_the_sizes():
    """--snail-blocks: pairs of (TC, attention); --cnn-blocks: residual blocks per stage."""
    assert len(SNAIL(IN_DIM, 12, filters=4, blocks=1).layers) == 2
    assert len(SNAIL(IN_DIM, 12, filters=4, blocks=3).layers) == 6
    lean = ImpalaCNN(obs_size=16, channels=(8, 16), blocks=0, out_dim=32)
    assert [type(m) for m in lean.stages] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    assert lean.fc.in_features == 16 * 4 * 4
    assert lean(random_frames(2, 3, size=16)).shape == (2, 3, 32)


def with_old_snail_names(state, prefix=""):
    """A state dict whose SNAIL (at `prefix`) names its two pairs as before 2026-11-25: tc1, attn1, tc2, attn2."""
    old_names = {f"{prefix}layers.{i}.": f"{prefix}{name}." for i, name in enumerate(("tc1", "attn1", "tc2", "attn2"))}
    renamed = {}
    for key, value in state.items():
        new = next((p for p in old_names if key.startswith(p)), "")
        renamed[old_names.get(new, "") + key[len(new):]] = value
    return renamed


def test_snail_loads_the_pair_names_of_checkpoints_made_before_blocks_was_a_flag():
    """Before 2026-11-25 SNAIL's two pairs were attributes tc1, attn1, tc2, attn2; such a state dict
    loads strictly into today's layers 0..3 and gives the same outputs."""
    snail = SNAIL(IN_DIM, 12, seq_len=SEQ_LEN, filters=4, key_size=8, value_size=5, blocks=2)
    old_state = with_old_snail_names(snail.state_dict())
    assert any(key.startswith("attn2.") for key in old_state) and not any(k.startswith("layers.") for k in old_state)
    loaded = SNAIL(IN_DIM, 12, seq_len=SEQ_LEN, filters=4, key_size=8, value_size=5, blocks=2)
    loaded.load_state_dict(old_state)  # strict: every name found, none left over
    x = torch.randn(2, 9, IN_DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), snail(x))
