"""Does a three-block memory agent read every failure in its bank, or only one? A counterfactual test.

    python benchmark/grid_two_failures.py runs/<run>/agent.pt [more checkpoints] [--out docs/grid_two_failures.md]

On every held-out level (three blocks), greedy episodes from the level's start, each with SNAIL fresh,
with banks made by hand (the last L steps of a scripted walk into a block, stored as the bank stores a
failure, as in grid_bank_probe.py):
  - an empty bank: the block it walks to is its favourite F;
  - a bank naming F: the block it walks to then, if another, is its next choice N;
  - a bank naming N alone: does it read a failure that is not its favourite?
  - a bank naming F and N, in either order: the Bayes-optimal agent walks to the third block, the one no
    failure names. One that reads only whether its favourite failed walks to N again.
With both named, the reader's attention at the episode's first step says how it reads them: the weight each head
puts on F's entry (the rest goes to N's, and to the null slot where the agent has one), the share of heads that put
over 0.9 on one entry, and the share of levels where one head looks at each (the heads are concatenated, so such a
read keeps the two failures apart).
Writes docs/grid_two_failures.md or --out.

    python benchmark/grid_two_failures.py [checkpoints] --supervised-steps 3000 --seeds 1 2 3 --out docs/grid_two_failures_supervised.md

Can the bank's read carry two failures when trained to, by supervision instead of PPO? Behaviour cloning of
walks into a block no failure names, with a bank naming one or two blocks drawn at random; then greedy
episodes on held-out levels, against what a policy blind to its bank (2/3, 1/3) and one that reads a single
failure (1, 1/2) could score at best. For an agent with fresh weights, and per checkpoint for its reader
alone (the rest frozen) and for the whole agent.
"""

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_bank_probe import DOCS_AGENT, fit, hits_with_banks, scripted_failure  # noqa: E402
from grid_fresh_reader import READER  # noqa: E402
from learning import write_doc  # noqa: E402

BANKS = ("empty", "F", "N", "F, N", "N, F")  # the blocks each bank's failures walked into, oldest first


@contextmanager
def attention_recorded(agent):
    """While inside, every call of the agent's (first) reader appends its attention weights, (B, heads, Q, N)
    with the bank's slots oldest first, to the list it yields; the read itself is unchanged."""
    attention = agent.memory_read[0].attention
    forward, calls = attention.forward, []

    def recording(*inputs, **options):
        # a second call for the weights: asking the first for them takes another kernel, whose sums differ in the
        # last bits, and the greedy walks should be the ones the probe without weights makes
        _, weights = forward(*inputs, **dict(options, need_weights=True, average_attn_weights=False))
        calls.append(weights.detach())
        return forward(*inputs, **options)

    attention.forward = recording
    try:
        yield calls
    finally:
        del attention.forward  # the instance attribute hid the module's own forward


def probe(path, num_levels):
    """The block hit (-1: none) on each usable level under each bank of BANKS, F and N per level (N: -1 where the
    bank naming F sent the agent to no other block; those levels get no two-failure banks), and for the banks naming
    both, the reader's attention at the first step: {"F": on F's entry, "N": on N's, and with --null-slot "null": on
    the null slot}, each (levels, heads) (rows of levels without N: NaN)."""
    args = grid.Args(num_test_levels=num_levels)
    agent = grid.load_checkpoint(path, args, len(grid.MOVES), torch.device("cpu")).eval()
    if args.num_blocks != 3 or not agent.use_memory:
        raise SystemExit(f"grid_two_failures.py: error: {path} is not a three-block agent with a bank")
    levels = grid.task_levels(args, "test", num_levels)
    walks = {(level, block): scripted_failure(levels, level, block, args) for level in range(num_levels) for block in range(3)}
    usable = np.array([level for level in range(num_levels) if all(walks[level, block] is not None for block in range(3))])

    def hits_with(named):  # named: per usable level, the blocks its bank's failures walked into, oldest first
        return hits_with_banks(agent, args, levels, usable, walks, named)

    hits = {"empty": hits_with([[]] * len(usable))}
    favourite = hits["empty"]
    hits["F"] = hits_with([[f] if f >= 0 else [] for f in favourite])
    nxt = np.where((favourite >= 0) & (hits["F"] >= 0) & (hits["F"] != favourite), hits["F"], -1)
    hits["N"] = hits_with([[n] if n >= 0 else [] for n in nxt])
    attention = {}
    null_slot = agent.memory_read[0].null is not None  # the read's first entry, before the bank's slots
    for bank, f_slot in (("F, N", 0), ("N, F", 1)):
        named = [([f, n] if f_slot == 0 else [n, f]) if n >= 0 else [] for f, n in zip(favourite, nxt)]
        with attention_recorded(agent) as calls:
            hits[bank] = hits_with(named)
        weights = calls[0][:, :, 0].numpy().astype(float)  # the first step's query: (levels, heads, entries)
        weights[nxt < 0] = np.nan
        entries = {"F": null_slot + f_slot, "N": null_slot + 1 - f_slot} | ({"null": 0} if null_slot else {})
        attention[bank] = {name: weights[..., entry] for name, entry in entries.items()}
    return favourite, nxt, hits, attention


def walk_cases(args, split, count, rng):
    """On each level of a split where a straight walk into every block exists: one or two blocks drawn at random
    (half and half), named by a bank holding walks into them in random order, and a target: the third block after
    two failures, one of the other two drawn at random after one. Returns the levels, the kept level ids, the blocks
    each bank names (oldest first), the targets, the BankView, the walks into every block ({(level, block): walk})
    and the walk into each target as a trial's first steps: frames (B, T, H, W, 3), moves and valid steps (B, T)."""
    levels = grid.task_levels(args, split, count)
    bank = grid.MemoryBank(2, args.mem_len, (args.obs_size, args.obs_size, 3), float("inf"))
    walks, kept, named, targets = {}, [], [], []
    for level in range(count):
        level_walks = [scripted_failure(levels, level, block, args) for block in range(3)]
        if any(walk is None for walk in level_walks):
            continue
        blocks = [int(b) for b in rng.permutation(3)[: rng.integers(1, 3)]]
        for block in blocks:
            bank.add(level, *level_walks[block])
        free = [block for block in range(3) if block not in blocks]
        walks.update({(level, block): walk for block, walk in enumerate(level_walks)})
        kept.append(level)
        named.append(blocks)
        targets.append(free[rng.integers(len(free))])
    kept, length = np.array(kept), max(len(walks[level, target][1]) for level, target in zip(kept, targets))
    frames = np.zeros((len(kept), length, args.obs_size, args.obs_size, 3), np.uint8)
    moves, valid = np.zeros((len(kept), length), np.int64), np.zeros((len(kept), length), bool)
    for row, (level, target) in enumerate(zip(kept, targets)):
        walk_frames, walk_moves, _ = walks[level, target]
        frames[row, : len(walk_moves)], moves[row, : len(walk_moves)], valid[row, : len(walk_moves)] = \
            walk_frames, walk_moves, True
    return (levels, kept, named, np.array(targets), bank.get(kept).to("cpu"), walks,
            (torch.as_tensor(frames), torch.as_tensor(moves), torch.as_tensor(valid)))


def supervised(steps, checkpoint=None, trained="all", seed=1, batch=64, train_levels=20000, test_levels=500,
               grid_size=8):
    """Can the bank's read carry two failures when trained to? Behaviour cloning (Adam 1e-3, `steps` steps of
    `batch` cases of walk_cases on training levels): the log-probability of each move of the walk into the target,
    the trial's first steps, with the bank read as in a trial. An agent with fresh weights (three blocks on a
    `grid_size` grid, the default sizes) or the checkpoint's (its own grid), all of it, its memory read alone
    (`trained="reader"`) or nothing ("none": the checkpoint as it is). Then one greedy episode per held-out level
    with its bank, SNAIL fresh. Returns per number of failures named (1, 2): the share of levels where the agent
    walked into a block no failure names (after two: the third) and the level count; the trained agent and its
    Args. A policy blind to its bank scores at most 2/3 and 1/3; one that reads one failure, 1 and 1/2."""
    torch.manual_seed(seed)
    args = grid.Args(num_blocks=3, grid_size=grid_size, **DOCS_AGENT)  # the docs' fresh agents (grid_bank_probe)
    agent = grid.Agent(args, len(grid.MOVES)) if checkpoint is None else \
        grid.load_checkpoint(checkpoint, args, len(grid.MOVES), torch.device("cpu"))
    if args.num_blocks != 3 or not agent.use_memory:
        raise SystemExit(f"grid_two_failures.py: error: {checkpoint} is not a three-block agent with a bank")
    for name, parameter in agent.named_parameters():
        parameter.requires_grad_(trained == "all" or name.startswith(READER))
    optimizer = torch.optim.Adam([p for p in agent.parameters() if p.requires_grad] or [torch.zeros(1)], lr=1e-3)
    rng = np.random.default_rng(seed)
    *_, view, _, (frames, moves, valid) = walk_cases(args, "train", train_levels, rng)
    test_cases = walk_cases(args, "test", test_levels, np.random.default_rng([seed, 1]))  # the same whatever is trained
    starts = torch.zeros(moves.shape)
    starts[:, 0] = 1

    def loss_of(rows):
        bank = grid.BankView(*(x[rows] for x in view[:4]), visible=torch.ones(len(rows), moves.shape[1], 2, dtype=torch.bool))
        previous = torch.nn.functional.pad(moves[rows], (1, 0))[:, :-1]
        _, log_probs, _, _ = agent.get_action_and_value(frames[rows], previous, torch.zeros(moves[rows].shape),
                                                        starts[rows], [bank], moves[rows])
        return -(log_probs * valid[rows]).sum() / valid[rows].sum()

    agent.train()
    if trained != "none":
        fit(optimizer, loss_of, len(moves), steps, rng, batch)
    levels, kept, named, _, _, walks, _ = test_cases
    hits = hits_with_banks(agent.eval(), args, levels, kept, walks, named)
    right = np.array([hit >= 0 and hit not in blocks for hit, blocks in zip(hits, named)])
    num_named = np.array([len(blocks) for blocks in named])
    return {k: (right[num_named == k].mean(), int((num_named == k).sum())) for k in (1, 2)}, agent, args


def shares(favourite, nxt, hits, attention=None):
    """The table's cells: where each bank sent the agent, as shares of the levels the bank was made for; with
    `attention` (probe's), the reader's mean weight on F's entry and on the null slot (NaN without one), its share of
    heads peaked on F's or N's entry, of levels with a head on each, and the third-block shares on those levels and
    the others."""
    walked, paired = favourite >= 0, nxt >= 0
    third = 3 - favourite - nxt  # blocks are 0, 1, 2
    cells = {"levels": len(favourite), "empty: a block": walked.mean(), "levels with N": paired.sum()}
    f = hits["F"][walked]
    cells.update({"F: F again": (f == favourite[walked]).mean(), "F: another": ((f >= 0) & (f != favourite[walked])).mean(),
                  "F: none": (f < 0).mean()})
    cells.update({"N: N again": (hits["N"][paired] == nxt[paired]).mean(), "N: F": (hits["N"][paired] == favourite[paired]).mean()})
    for bank in ("F, N", "N, F"):
        h = hits[bank][paired]
        cells.update({f"{bank}: the third": (h == third[paired]).mean(), f"{bank}: F": (h == favourite[paired]).mean(),
                      f"{bank}: N": (h == nxt[paired]).mean(), f"{bank}: none": (h < 0).mean()})
    cells["same block either order"] = (hits["F, N"][paired] == hits["N, F"][paired]).mean()
    for bank, weights in (attention or {}).items():
        on_f, on_n, to_third = weights["F"][paired], weights["N"][paired], hits[bank][paired] == third[paired]
        cells[f"{bank}: weight on F"] = on_f.mean()
        cells[f"{bank}: weight on null"] = weights["null"][paired].mean() if "null" in weights else np.nan
        cells[f"{bank}: heads over 0.9 on one"] = ((on_f > 0.9) | (on_n > 0.9)).mean()
        # multi-head attention concatenates its heads: one head on each entry carries both failures side by side
        split = (on_f > 0.9).any(1) & (on_n > 0.9).any(1)
        cells[f"{bank}: a head on each"] = split.mean()
        cells[f"{bank}: the third, a head on each"] = to_third[split].mean() if split.any() else np.nan
        cells[f"{bank}: the third, not"] = to_third[~split].mean() if (~split).any() else np.nan
    return cells


def save_weights(path, agent, args):
    """The agent's weights and flags with grid_failmem's mark: a checkpoint that --eval-only and --init-from read."""
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=agent.state_dict()), path)


def supervised_doc(args):
    runs = [(label, trained, path, seed) for seed in args.seeds for label, trained, path in [
        ("fresh weights", "all", None),
        *((f"`{Path(path).parent.name}`", trained, path) for path in args.checkpoints for trained in ("none", "all", "reader"))]]
    rows = {}
    for label, trained, path, seed in runs:
        result, agent, agent_args = supervised(args.supervised_steps, path, trained, seed)
        if args.save_dir and trained != "none":
            name = f"{'fresh' if path is None else Path(path).parent.name}_{trained}_{seed}.pt"
            Path(args.save_dir).mkdir(parents=True, exist_ok=True)
            save_weights(Path(args.save_dir) / name, agent, agent_args)
        what = {"none": "nothing (as PPO left it)", "reader": "its reader alone", "all": "all"}[trained]
        rows[label, trained, seed] = (f"| {label} | {what} | {seed} | "
                                      f"{result[1][0]:.3f} | {result[2][0]:.3f} | {result[1][1]} / {result[2][1]} |")
        print(rows[label, trained, seed], flush=True)
    command = " ".join(["python benchmark/grid_two_failures.py", *args.checkpoints,
                        f"--supervised-steps {args.supervised_steps}", "--seeds", *map(str, args.seeds),
                        *([f"--save-dir {args.save_dir}"] if args.save_dir else []), f"--out {args.out}"])
    text = ["# Gridworld, three blocks: can the bank's read carry two failures when trained to? (supervised)", "",
            f"Made by `{command}`. Behaviour cloning: on 20,000 training levels (three blocks, W 8), a bank holding "
            "scripted walks into one or two blocks drawn at random (as the bank stores failures, random order), and "
            "the walk into a block no failure names as the trial's first steps (after two failures the third block; "
            f"after one, one of the other two at random); {args.supervised_steps} Adam steps (1e-3) of 64 cases on the "
            "log-probability of its moves. Then one greedy episode per held-out level (of the first 500, those where a "
            "straight walk into every block exists), its bank drawn as above (one draw per seed, the same for every "
            "agent of that seed), SNAIL fresh: the share of levels where the agent walked into a block no failure "
            "names. A checkpoint is tested as PPO left it, then trained whole, then with its reader alone trained.", "",
            "| agent | trained | seed | one failure named: another block | two named: the third block | levels (one / two) |",
            "|---|---|---|---|---|---|",
            "| blind to its bank, at best | | | 0.667 | 0.333 | |",
            "| reads one failure only, at best | | | 1.000 | 0.500 | |",
            *(rows[key] for key in sorted(rows, key=lambda key: (key[0] != "fresh weights", *key))), ""]
    write_doc(Path(args.out), "\n".join(text))
    print("\n".join(text))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--num-test-levels", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_two_failures.md"))
    parser.add_argument("--supervised-steps", type=int, default=0,
                        help="instead of the counterfactual probe, the supervised test for this many steps: an agent "
                             "with fresh weights per --seeds, and each checkpoint's reader alone and whole agent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of the supervised test")
    parser.add_argument("--save-dir", help="where the supervised test writes each trained agent's checkpoint")
    args = parser.parse_args(argv)
    if args.supervised_steps < 0:
        parser.error(f"--supervised-steps must be 0 or more, got {args.supervised_steps}")
    if not args.checkpoints and not args.supervised_steps:
        parser.error("give checkpoints to probe, --supervised-steps, or both")
    torch.set_num_threads(1)
    if args.supervised_steps:
        return supervised_doc(args)
    rows = [(Path(path).parent.name, shares(*probe(path, args.num_test_levels))) for path in args.checkpoints]
    columns = list(rows[0][1])
    command = " ".join(["python benchmark/grid_two_failures.py", *args.checkpoints]
                       + ([f"--out {args.out}"] if args.out != parser.get_default("out") else []))
    text = ["# Gridworld, three blocks: does the memory agent read both failures in its bank? (counterfactual banks)", "",
            f"Made by `{command}`: the held-out levels of the first {args.num_test_levels} where a straight walk into each "
            "block exists, one greedy episode per bank from the level's start, SNAIL fresh. F: the block the "
            "empty-bank episode walks to; N: the block it walks to when the bank names F (levels where it walks to "
            "another block). A bank names a block by holding a scripted walk into it, stored as a failure. "
            "Bayes-optimal: never the named block, and the third block when F and N are both named. Weight on F: "
            "with both named, the reader's attention on F's entry at the episode's first step, averaged over its "
            "heads and the levels (the rest is on N's, and for an agent with `--null-slot` on the null slot: weight "
            "on null, nan without one); heads over 0.9 on one: the share of (level, head) pairs that put over 0.9 "
            "on F's entry or on N's; a head on each: the share of levels where one head puts over 0.9 on "
            "F's entry and another over 0.9 on N's (the heads' outputs are concatenated, so such a read keeps the two "
            "failures apart); the third, a head on each / not: the share walking to the third block among the levels "
            "where the read is so split / is not.", "",
            "| agent | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cells in rows:
        text.append(f"| `{name}` | " + " | ".join(
            str(int(value)) if isinstance(value, (int, np.integer)) else f"{value:.3f}" for value in cells.values()) + " |")
    write_doc(Path(args.out), "\n".join(text + [""]))
    print("\n".join(text))


if __name__ == "__main__":
    main()
