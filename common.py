"""Neural blocks shared by grid_failmem.py, miniworld_failmem.py and reacher_failmem.py.

Only the blocks live here (paper Sec. 2, DESIGN.md Sec. 3); each script builds its own
agent from them, next to its environment, memory bank and PPO loop.

- `ImpalaCNN`: the observation encoder (Appendix A, Espeholt et al. 2018).
- `SNAIL`: causal TC blocks and causal attention blocks over the current trial (Sec. 2.3),
  with a step-by-step mode for rollouts that gives the same numbers as the full sequence.
- `TrajectoryEmbedding`: Transformer encoder over the L steps of one stored trajectory and a
  decoder whose single query is a learned vector g (Sec. 2.1).
- `MemoryReader`: multi-head attention from the current observation to the trajectory
  embeddings, then the paper's GRU gate (Sec. 2.2); zero when the bank is empty (or, as an
  option, a learned null slot in every bank).
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaCNN(nn.Module):
    """IMPALA CNN (Appendix A): per stage conv3x3, maxpool 3 stride 2, `blocks` residual blocks
    (IMPALA: 2); then flatten, FC `out_dim`, ReLU. Takes uint8 frames (..., H, W, 3), scales
    them to [-0.5, 0.5]. Smaller `channels` and `blocks` give the same shape of encoder for less."""

    def __init__(self, obs_size=64, in_channels=3, channels=(16, 32, 32), out_dim=256, blocks=2):
        super().__init__()
        stages, size = [], obs_size
        for out_channels in channels:
            stages += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
                # without residual blocks a ReLU keeps the stages from composing into one linear map
                *((ResidualBlock(out_channels) for _ in range(blocks)) if blocks else [nn.ReLU()]),
            ]
            in_channels, size = out_channels, (size + 1) // 2
        self.stages = nn.Sequential(*stages)
        self.fc = layer_init(nn.Linear(in_channels * size * size, out_dim))
        self.out_dim = out_dim

    def forward(self, frames):
        lead = frames.shape[:-3]
        # centred, so that the convs' zero padding reads as grey: in [0, 1] it read as black, the
        # gridworld agent's colour (L1 training success at 150k steps: 0.98 vs. 0.73, docs/grid_ladder_L1_centre.md)
        x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        x = F.relu(self.stages(x)).flatten(1)
        return F.relu(self.fc(x)).reshape(*lead, -1)


class DenseTCBlock(nn.Module):
    """SNAIL's TC block (Mishra et al. 2017): dense causal conv layers of kernel 2 with
    dilations 1, 2, 4, ... up to the trial length, gated tanh * sigmoid, each layer's output
    concatenated to its input. Adds `filters * len(dilations)` channels."""

    def __init__(self, in_dim, seq_len, filters):
        super().__init__()
        self.dilations = [2**i for i in range(max(1, math.ceil(math.log2(seq_len))))]
        self.convs = nn.ModuleList()
        for i in range(len(self.dilations)):
            # one conv gives both halves of the gate; weight[..., 0] looks d steps back
            self.convs.append(nn.Conv1d(in_dim + i * filters, 2 * filters, kernel_size=2))
        self.out_dim = in_dim + len(self.dilations) * filters

    def forward(self, x, episode_begin=None):  # (B, T, D) -> (B, T, out_dim)
        """`episode_begin` (B, T): where the sequence of each position began; a layer looking
        d steps back from t sees zeros before it, as `step` does after `restart`. The kernel's two taps
        are two matrix products over all positions at once (the same numbers as a conv1d, 1.1-1.3x faster)."""
        h, positions = x, torch.arange(x.shape[1], device=x.device)
        for conv, d in zip(self.convs, self.dilations):
            past = F.pad(h, (0, 0, d, 0))[:, : h.shape[1]]  # h at t - d, zeros before the first step
            if episode_begin is not None:
                past = past * (positions - d >= episode_begin)[..., None]
            out = F.linear(past, conv.weight[:, :, 0], conv.bias) + F.linear(h, conv.weight[:, :, 1])
            f, g = out.chunk(2, dim=-1)
            h = torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], dim=-1)
        return h

    def init_cache(self, batch_size, max_len, device=None):
        """Each layer's inputs at the last max-dilation + 1 positions, a ring buffer: no layer
        looks further back, so a 400-step test trial needs no more memory than an 80-step one."""
        length = min(max_len, self.dilations[-1] + 1)
        return [torch.zeros(batch_size, length, c.in_channels, device=device) for c in self.convs]

    def step(self, x_t, history, t):
        """Output at position t; `history[k]` is layer k's input ring buffer (B, S, C_k), S > the
        largest dilation or S > t."""
        h = x_t
        for k, (conv, d) in enumerate(zip(self.convs, self.dilations)):
            size = history[k].shape[1]
            history[k][:, t % size] = h
            past = history[k][:, (t - d) % size] if t >= d else torch.zeros_like(h)
            out = F.linear(past, conv.weight[:, :, 0], conv.bias) + F.linear(h, conv.weight[:, :, 1])
            f, g = out.chunk(2, dim=-1)
            h = torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], dim=-1)
        return h


class CausalAttentionBlock(nn.Module):
    """SNAIL's attention block: single-head soft attention over the past (softmax over keys,
    masked to positions <= t), its read concatenated to the input."""

    def __init__(self, in_dim, key_size, value_size):
        super().__init__()
        self.query = nn.Linear(in_dim, key_size)
        self.key = nn.Linear(in_dim, key_size)
        self.value = nn.Linear(in_dim, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_dim = in_dim + value_size

    def forward(self, x, allowed=None):
        """x (B, T, D); `allowed` (B, T, T) bool narrows the past further (e.g. to one episode)."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        if allowed is None:
            read = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
            read = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed & causal)
        return torch.cat([x, read], dim=-1)

    def init_cache(self, batch_size, max_len, device=None):
        """The (keys, values) buffers `step` fills, one row per position."""
        keys = torch.zeros(batch_size, max_len, self.key.out_features, device=device)
        return keys, torch.zeros(batch_size, max_len, self.value.out_features, device=device)

    def step(self, x_t, history, t, allowed=None):
        """Output at position t; `history` caches the keys and values of positions < t;
        `allowed` (B, t + 1) bool narrows the past as in `forward`."""
        keys, values = history
        keys[:, t], values[:, t] = self.key(x_t), self.value(x_t)
        logits = torch.einsum("bk,btk->bt", self.query(x_t), keys[:, : t + 1]) * self.scale
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        read = torch.einsum("bt,btv->bv", logits.softmax(-1), values[:, : t + 1])
        return torch.cat([x_t, read], dim=-1)


class SNAIL(nn.Module):
    """SNAIL over the current trial (Sec. 2.3): `blocks` pairs of (TC, attention) (SNAIL's RL
    agents: 2), then a linear layer to `out_dim`. `forward` takes a whole sequence; `step` one
    position, given the cache from `init_cache`, and returns what `forward` would there."""

    def __init__(self, in_dim, out_dim, seq_len=80, filters=32, key_size=32, value_size=32, blocks=2):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(blocks):
            self.layers.append(DenseTCBlock(in_dim, seq_len, filters))
            self.layers.append(CausalAttentionBlock(self.layers[-1].out_dim, key_size, value_size))
            in_dim = self.layers[-1].out_dim
        self.out = layer_init(nn.Linear(in_dim, out_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints made before the number of pairs was a flag (2026-11-25) named them tc1, attn1, tc2, attn2
        for position, old in enumerate(("tc1", "attn1", "tc2", "attn2")):
            old_prefix = f"{prefix}{old}."
            for key in [k for k in state_dict if k.startswith(old_prefix)]:
                state_dict[f"{prefix}layers.{position}.{key[len(old_prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, episode_starts=None):  # (B, T, in_dim) -> (B, T, out_dim)
        """`episode_starts` (B, T), 1 where a new sequence begins: each position then sees only
        its own sequence, as `step` with `restart` at those positions."""
        begin = same_sequence = None
        if episode_starts is not None:
            positions = torch.arange(x.shape[1], device=x.device)
            begin = (positions * (episode_starts > 0)).cummax(1).values  # (B, T) where t's sequence began
            same_sequence = positions[None, None, :] >= begin[:, :, None]  # (B, T, T): key s after t's begin
        for layer in self.layers:
            x = layer(x, begin) if isinstance(layer, DenseTCBlock) else layer(x, same_sequence)
        return F.relu(self.out(x))

    def init_cache(self, batch_size, max_len, device=None):
        """Each layer's buffers, and where each row's sequence began (`restart` moves it)."""
        layers = [layer.init_cache(batch_size, max_len, device) for layer in self.layers]
        return dict(layers=layers, start=torch.zeros(batch_size, dtype=torch.long, device=device), restarted=False)

    def step(self, x_t, cache, t):  # (B, in_dim) -> (B, out_dim), position t of the sequence
        # rows restarted at position s see positions s..t only, as a sequence of their own would
        allowed = torch.arange(t + 1, device=x_t.device) >= cache["start"][:, None] if cache["restarted"] else None
        for layer, history in zip(self.layers, cache["layers"]):
            x_t = layer.step(x_t, history, t, allowed) if isinstance(layer, CausalAttentionBlock) else layer.step(x_t, history, t)
        return F.relu(self.out(x_t))

    def restart(self, cache, rows, t):
        """Rows `rows` begin a new sequence at position t: their TC buffers are zeroed (what a
        sequence's first steps look back at) and their attention sees positions >= t only."""
        for layer, history in zip(self.layers, cache["layers"]):
            if isinstance(layer, DenseTCBlock):
                for buffer in history:
                    buffer[rows] = 0.0
        cache["start"][rows] = t
        cache["restarted"] = True


class TrajectoryEmbedding(nn.Module):
    """Sec. 2.1: e_tau = Encoder(Phi(tau)), v_tau = Decoder(g, e_tau). Input: the per-step
    embeddings Phi(o, a, r) of stored trajectories (B, L, E) with `valid` (B, L) marking real
    steps; trajectories shorter than L are padded at the front, so position L-1 is the last step."""

    def __init__(self, embed_dim=64, num_heads=4, num_layers=2, max_len=80):
        super().__init__()
        self.position = nn.Parameter(torch.randn(max_len, embed_dim) * 0.02)
        self.g = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)  # the learned query g
        layer = dict(d_model=embed_dim, nhead=num_heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), num_layers)

    def forward(self, steps, valid):  # (B, L, E), (B, L) bool -> (B, E)
        length = steps.shape[1]
        padding = ~valid
        x = steps + self.position[-length:]
        encoded = self.encoder(x, src_key_padding_mask=padding)
        query = self.g.expand(steps.shape[0], 1, -1)
        return self.decoder(query, encoded, memory_key_padding_mask=padding).squeeze(1)


class MemoryReader(nn.Module):
    """Sec. 2.2: m_d = MultiHead(v'_o, v_tau, v_tau), then the GRU gate
    r = sig(FC(m_d) + FC(v'_o)), z = sig(FC(m_d) + FC(v'_o)), y = tanh(FC(m_d) + FC(r * v'_o)),
    m_o = (1 - z) * y + z * v'_o. Empty bank: m_o = 0 (Sec. 2.3). With `null_slot` (a departure) a learned
    embedding sits in every bank as slot 0, always valid: a view no stored failure bears on can read it
    instead, and an empty bank reads it alone rather than giving 0."""

    def __init__(self, embed_dim=64, num_heads=4, null_slot=False):
        super().__init__()
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.null = nn.Parameter(torch.zeros(1, 1, embed_dim)) if null_slot else None
        self.w_r, self.u_r = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
        self.w_z, self.u_z = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
        self.w_y, self.u_y = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)

    def gate(self, m_d, v_o):
        r = torch.sigmoid(self.w_r(m_d) + self.u_r(v_o))
        z = torch.sigmoid(self.w_z(m_d) + self.u_z(v_o))
        y = torch.tanh(self.w_y(m_d) + self.u_y(r * v_o))
        return (1 - z) * y + z * v_o

    def forward(self, v_o, memory, valid):
        """v_o (B, Q, E) queries, memory (B, N, E) trajectory embeddings, valid (B, N) bool, or
        (B, Q, N) when each query sees its own slots (a bank that grows during a trial)."""
        if valid.dim() == 2:
            valid = valid[:, None, :].expand(-1, v_o.shape[1], -1)
        if self.null is not None:
            memory = torch.cat([self.null.expand(len(memory), -1, -1), memory], 1)
            valid = torch.cat([torch.ones_like(valid[..., :1]), valid], -1)
        empty = ~valid.any(-1)
        # a fully masked row would give NaN; unmask slot 0 there and zero the result below
        blocked = ~valid
        blocked[..., 0] &= ~empty
        mask = blocked.repeat_interleave(self.attention.num_heads, dim=0)
        m_d, _ = self.attention(v_o, memory, memory, attn_mask=mask, need_weights=False)
        m_o = self.gate(m_d, v_o)
        return m_o.masked_fill(empty[..., None], 0.0)
