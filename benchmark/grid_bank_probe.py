"""Does the memory agent read WHICH block failed from its bank? A counterfactual test.

    python benchmark/grid_bank_probe.py runs/<run>/agent.pt [more checkpoints] [--out docs/grid_bank_probe.md]
    python benchmark/grid_bank_probe.py --naming-sweep --out docs/grid_bank_naming_sweep.md   # no checkpoint needed

On every held-out level (two blocks), three greedy episodes from the level's start, each with SNAIL
fresh (a test episode after the first): with an empty bank, with a bank holding one failure that
walked straight into block 0, and with one that walked straight into block 1 (the last L steps of a
scripted walk, stored as the bank stores a failure: each step with the frame its action was taken on,
its last reward -1, the trap's). One of the two banks is true (it names the trap), the other false (it
names the goal as a failure). An agent that reads which block failed goes to the other block in both;
one that only reads that *a* block failed changes its path the same way whatever the bank names.
Counted per level: the block hit in each episode, and, given the block E the empty-bank episode walked
to, whether a bank naming E sends it to the other block and a bank naming the other block keeps it on E.

Then two supervised tests. Can the bank's path name the failed block at all when trained to?
The same CNN -> Phi -> trajectory Transformer with fresh weights and a linear layer, trained by
cross-entropy on scripted walks of training levels to output the failed block's cell, scored on
walks of held-out levels; with the frames each step was taken on (the bank's) and, for comparison,
with the frames each step led to (the last one: the agent on the block). And can the whole agent learn
the Bayes-optimal move after a failure when told it (`supervised_recovery`)? With --naming-sweep, both
supervised tests on W8 and W16 for CNNs of 3, 2 and 1 pooling stages: what the CNN's pooling costs the bank's
path where a cell is one pixel. Writes docs/grid_bank_probe.md or --out.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402

MOVE_OF = {(0, -1): 0, (0, 1): 1, (-1, 0): 2, (1, 0): 3}


# the flags of the docs' fresh agents (these probes, grid_two_failures' and grid_warm_start's clones), which train no
# critic; without its t / T input (the default since 2026-11-28) a fresh agent draws
# the weights, and the torch RNG after them, that the docs' probes drew (and its args, without the critic's
# standardised targets of 2026-11-29, are the docs'); their read is the paper's, without the null slot (the default
# since 2026-11-30)
DOCS_AGENT = dict(time_aware_value=False, value_norm=False, null_slot=False)


def straight_walk(start, target, avoid):
    """Moves from start into target, rows first or columns first, through no cell of `avoid`; None if both pass one."""
    (r0, c0), (r1, c1) = start, target
    rows = [(np.sign(r1 - r0), 0)] * abs(r1 - r0)
    cols = [(0, np.sign(c1 - c0))] * abs(c1 - c0)
    for moves in (rows + cols, cols + rows):
        cells = np.cumsum([start] + moves, 0)[1:-1]
        if not any(tuple(cell) in avoid for cell in cells):
            return [MOVE_OF[tuple(int(x) for x in m)] for m in moves]
    return None


def scripted_failure(levels, level, block, args, after=False):
    """The frames, actions and rewards of a walk into `block`, as the bank stores a failure: each step with the
    frame its action was taken on, or with `after` the frame it led to (the last one: the agent on the block)."""
    env = grid.GridWorld(levels, args.grid_size, args.obs_size, args.trial_len)
    frame, _ = env.reset(options={"level": level})
    blocks = [tuple(b) for b in levels["blocks"][level]]
    moves = straight_walk(tuple(levels["starts"][level]), blocks[block], set(blocks) - {blocks[block]})
    if moves is None:
        return None
    frames = []
    for move in moves:
        next_frame, *_ = env.step(move)
        frames.append(next_frame if after else frame)
        frame = next_frame
    rewards = np.where(np.arange(len(moves)) == len(moves) - 1, grid.TRAP_REWARD, 0.0).astype(np.float32)
    return np.stack(frames), np.array(moves), rewards


@torch.no_grad()
def first_hits(agent, args, levels, level_ids, banks):
    """The block each greedy episode hits (-1: none), SNAIL fresh, on level_ids with the given banks."""
    envs = grid.BatchedGridWorld(levels, len(level_ids), args.grid_size, args.obs_size, args.trial_len)
    frames = envs.set_levels(level_ids)
    cache, memories = agent.begin_trial(grid.bank_tensors(banks, level_ids, "cpu"), len(level_ids), args.trial_len)
    prev_actions, prev_rewards = torch.zeros(len(level_ids), dtype=torch.long), torch.zeros(len(level_ids))
    starts, hits = torch.ones(len(level_ids)), np.full(len(level_ids), -2)
    for t in range(args.trial_len):
        logits, _ = agent.step(torch.as_tensor(frames), prev_actions, prev_rewards, starts, (cache, memories), t)
        actions = logits.argmax(-1)
        frames, rewards, terminated, truncated, info = envs.step(actions.numpy())
        ended = (terminated | truncated) & (hits == -2)
        hits[ended] = info["hit"][ended]
        prev_actions, prev_rewards, starts = actions, torch.as_tensor(rewards, dtype=torch.float32), torch.zeros(len(level_ids))
        if (hits > -2).all():
            break
    return hits


def hits_with_banks(agent, args, levels, usable, walks, named):
    """first_hits on the `usable` levels, each level's bank holding the walks (`walks[level, block]`) into the blocks
    `named` gives it, one list per usable level, oldest first (an empty list: an empty bank)."""
    banks = grid.make_banks(args, (args.obs_size, args.obs_size, 3), float("inf"))
    for level, blocks in zip(usable, named):
        for block in blocks:
            banks[0].add(int(level), *walks[level, block])
    return first_hits(agent, args, levels, usable, banks)


def probe(path, num_levels):
    args = grid.Args(num_test_levels=num_levels)
    agent = grid.load_checkpoint(path, args, len(grid.MOVES), torch.device("cpu")).eval()
    if args.num_blocks != 2 or not agent.use_memory:
        raise SystemExit(f"grid_bank_probe.py: error: {path} is not a two-block agent with a bank")
    levels = grid.task_levels(args, "test", num_levels)
    walks = {(level, block): scripted_failure(levels, level, block, args) for level in range(num_levels) for block in (0, 1)}
    usable = np.array([level for level in range(num_levels) if walks[level, 0] is not None and walks[level, 1] is not None])
    hits = {named: hits_with_banks(agent, args, levels, usable, walks, [[] if named is None else [named]] * len(usable))
            for named in (None, 0, 1)}
    goals = levels["goals"][usable]
    return args, len(usable), goals, hits


def random_walks(args, split, count, rng, after=False, keep=lambda levels, level, named: True):
    """For each level of the split, a block drawn at random and a scripted walk into it; the levels whose
    walk exists and `keep` accepts, their named blocks and a BankView of the walks (one slot each)."""
    levels = grid.task_levels(args, split, count)
    bank = grid.MemoryBank(1, args.mem_len, (args.obs_size, args.obs_size, 3), float("inf"))
    kept, named_blocks = [], []
    for level in range(count):
        named = int(rng.integers(args.num_blocks))
        walk = scripted_failure(levels, level, named, args, after)
        if walk is not None and keep(levels, level, named):
            bank.add(level, *walk)
            kept.append(level)
            named_blocks.append(named)
    return levels, np.array(kept), np.array(named_blocks), bank.get(np.array(kept)).to("cpu")


def fit(optimizer, loss_of, count, steps, rng, batch, report_every=500):
    """`steps` Adam steps, each on `batch` of the `count` training cases drawn at random; the mean training loss of
    each `report_every` steps is printed, so that a long fit shows whether it still falls."""
    losses = []
    for step in range(1, steps + 1):
        loss = loss_of(torch.as_tensor(rng.integers(count, size=batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % report_every == 0:
            print(f"fit step {step}/{steps} | training loss {np.mean(losses[-report_every:]):.4f}", flush=True)


def supervised_naming(after, steps, seed=1, batch=64, **sizes):
    """Can the bank's path (CNN -> Phi -> trajectory Transformer, fresh weights, the default sizes or
    `sizes`, Args fields such as grid_size and cnn_channels) name the failed block when told to? Trained
    by cross-entropy on scripted walks of training levels to output the failed block's cell; accuracy on
    walks of held-out levels (chance 1/62 on W8, 1/254 on W16)."""
    torch.manual_seed(seed)
    args = grid.Args(**{**DOCS_AGENT, **sizes})
    agent = grid.Agent(args, len(grid.MOVES))
    head = torch.nn.Linear(args.embed_dim, args.grid_size ** 2)
    optimizer = torch.optim.Adam([*agent.parameters(), *head.parameters()], lr=1e-3)

    def walks(split, count, rng):
        levels, kept, named, view = random_walks(args, split, count, rng, after)
        row, col = levels["blocks"][kept, named].T
        return view, torch.as_tensor(row * args.grid_size + col)

    def cell_logits(view):
        return head(agent.embed_memory(view)[0][:, 0])

    rng = np.random.default_rng(seed)
    train_view, train_cells = walks("train", 20000, rng)
    test_view, test_cells = walks("test", 500, rng)
    fit(optimizer, lambda rows: F.cross_entropy(cell_logits(grid.BankView(*(x[rows] for x in train_view[:4]))),
                                                train_cells[rows]), len(train_cells), steps, rng, batch)
    with torch.no_grad():
        accuracy = (cell_logits(test_view).argmax(-1) == test_cells).float().mean()
    return float(accuracy)


def supervised_recovery(steps, seed=1, batch=64, **sizes):
    """Can the whole agent (fresh weights, the default sizes) learn the Bayes-optimal move after a failure
    when told it? On levels where no first move brings the agent nearer both blocks (so that a policy blind
    to its bank can do no better than a coin, 0.5), at the start with a bank holding a walk into one block:
    cross-entropy towards the moves that bring it nearer the other block (the log of their summed
    probability); the share of held-out levels whose most likely move is one of them. `sizes`: Args fields
    (grid_size, cnn_channels) instead of the defaults."""
    torch.manual_seed(seed)
    args = grid.Args(**{**DOCS_AGENT, **sizes})
    agent = grid.Agent(args, len(grid.MOVES))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)

    def nearer(levels, level):  # per block, the moves that bring the agent at the start nearer it
        start = levels["starts"][level]
        return np.stack([np.abs(start + grid.MOVES - block).sum(1) < np.abs(start - block).sum()
                         for block in levels["blocks"][level]])

    def cases(split, count, rng):
        levels, kept, named, view = random_walks(args, split, count, rng,
                                                 keep=lambda levels, level, _: not nearer(levels, level).all(0).any())
        good = np.stack([nearer(levels, level)[1 - block] for level, block in zip(kept, named)])
        frames = grid.BatchedGridWorld(levels, len(kept), args.grid_size, args.obs_size).set_levels(kept)
        return torch.as_tensor(frames)[:, None], view, torch.as_tensor(good)

    def logits_at_start(frames, view):
        obs_embed = agent.obs_embed(agent.cnn(frames))
        zeros = torch.zeros(frames.shape[:2])
        x = agent.trial_input(obs_embed, zeros.long(), zeros, torch.ones_like(zeros))
        memories = [(memory, filled[:, None]) for memory, filled in agent.read_banks([view])]
        return agent.heads(agent.snail(x), obs_embed, memories, torch.arange(1))[0][:, 0]

    def loss_of(rows):
        view = grid.BankView(*(x[rows] for x in train_view[:4]))
        log_probs = logits_at_start(train_frames[rows], view).log_softmax(-1)
        return -torch.logsumexp(log_probs.masked_fill(~train_good[rows], -torch.inf), -1).mean()

    rng = np.random.default_rng(seed)
    train_frames, train_view, train_good = cases("train", 40000, rng)
    test_frames, test_view, test_good = cases("test", 2000, rng)
    fit(optimizer, loss_of, len(train_good), steps, rng, batch)
    with torch.no_grad():
        best = logits_at_start(test_frames, test_view).argmax(-1)
    return float(test_good[torch.arange(len(best)), best].float().mean()), len(test_good)


SWEEP_GRIDS, SWEEP_CNNS, SWEEP_SEEDS = (8, 16), ((16, 32, 32), (16, 32), (16,)), (1, 2, 3)


def naming_sweep(steps):
    """The naming test (the frames the bank keeps) and the recovery test per grid size and CNN, on 16 px
    frames, for each seed: does the CNN's pooling, which leaves a 2 x 2 map after three stages, limit which
    cell the bank's path can name, and the move the whole agent can learn from it?"""
    def both(size, cnn, seed):
        sizes = dict(grid_size=size, cnn_channels=cnn)
        return supervised_naming(False, steps, seed, **sizes), supervised_recovery(steps, seed, **sizes)[0]
    return {(size, cnn): np.array([both(size, cnn, seed) for seed in SWEEP_SEEDS])
            for size in SWEEP_GRIDS for cnn in SWEEP_CNNS}


def sweep_section(sweep, steps):
    """`sweep`: (grid size, CNN) -> (seeds, 2) accuracies, naming then recovery."""
    obs = grid.Args().obs_size
    lines = ["## Does the CNN's pooling limit what the bank's path can carry? (`--naming-sweep`)", "",
             f"Naming: the bank's path with fresh weights (CNN -> Phi -> trajectory Transformer) and a linear layer, "
             f"trained by cross-entropy for {steps} steps of 64 scripted walks on training levels (two blocks, the "
             "frames the bank keeps) to output the cell of the block the walk failed on (Adam 1e-3); chance 1/62 on "
             f"W8, 1/254 on W16. Recovery: the whole agent with fresh weights, {steps} steps, towards the moves away "
             "from the block its bank names (a bank-blind policy scores 0.5). On "
             f"{obs} px frames, with the CNN's stages (each a conv and a pooling that halves the picture) as "
             f"`--cnn-channels`; held-out accuracy, mean ± sd over seeds {', '.join(map(str, SWEEP_SEEDS))} (per seed "
             "in brackets):", "",
             "| `--cnn-channels` | map after the CNN | " + " | ".join(
                 f"W {size} {test}" for size in SWEEP_GRIDS for test in ("naming", "recovery")) + " |",
             "|---|---|" + "---|" * 2 * len(SWEEP_GRIDS)]
    for cnn in SWEEP_CNNS:
        side = obs // 2 ** len(cnn)
        cells = [np.asarray(sweep[size, cnn])[:, test] for size in SWEEP_GRIDS for test in (0, 1)]
        lines.append(f"| {' '.join(map(str, cnn))} | {side} x {side} | " + " | ".join(
            f"{a.mean():.3f} ± {a.std():.3f} ({', '.join(f'{x:.2f}' for x in a)})" for a in cells) + " |")
    return lines + [""]


def row(label, goals, hits):
    empty, named0, named1 = hits[None], hits[0], hits[1]
    true_bank = np.where(goals == 0, named1, named0)  # the bank that names the trap
    false_bank = np.where(goals == 0, named0, named1)  # the bank that names the goal
    walked = empty >= 0  # levels where the empty-bank episode hit a block, E
    names_e = np.where(empty == 0, named0, named1)[walked]  # the bank names E ...
    names_other = np.where(empty == 0, named1, named0)[walked]  # ... or the block it did not walk to
    cells = [
        (empty == goals).mean(), (empty < 0).mean(),
        (true_bank == goals).mean(), (true_bank == 1 - goals).mean(), (true_bank < 0).mean(),
        (false_bank == 1 - goals).mean(), (false_bank == goals).mean(), (false_bank < 0).mean(),
        (names_e == 1 - empty[walked]).mean(), (names_other == empty[walked]).mean(),
        ((named0 == 1) & (named1 == 0)).mean(),
    ]
    return f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"


COLUMNS = ("empty bank: goal", "empty bank: no block",
           "bank names the trap: goal", "... the trap (named)", "... no block",
           "bank names the goal: the trap (other)", "... the goal (named)", "... no block",
           "bank names E: the other block", "bank names the other block: E",
           "the other block with both banks")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--num-test-levels", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_bank_probe.md"))
    parser.add_argument("--supervised-steps", type=int, default=500, help="steps of the supervised naming test (0: skip)")
    parser.add_argument("--naming-sweep", action="store_true",
                        help="also the naming and recovery tests on W8 and W16 for CNNs of 3, 2 and 1 stages, seeds 1-3")
    args = parser.parse_args()
    if not args.checkpoints and not args.naming_sweep:
        parser.error("give checkpoints to probe, --naming-sweep, or both")
    torch.set_num_threads(1)
    supervised = args.supervised_steps and args.checkpoints
    naming = {frames: supervised_naming(frames == "after", args.supervised_steps) for frames in ("before", "after")} \
        if supervised else {}
    recovery = supervised_recovery(args.supervised_steps) if supervised else None
    sweep = naming_sweep(args.supervised_steps) if args.naming_sweep else {}
    rows, used = [], set()
    for path in args.checkpoints:
        run_args, num_usable, goals, hits = probe(path, args.num_test_levels)
        used.add(num_usable)
        rows.append(row(f"`{Path(path).parent.name}`", goals, hits))
    command = " ".join(["python benchmark/grid_bank_probe.py", *args.checkpoints] + [
        flag for flag, given in ((f"--out {args.out}", args.out != parser.get_default("out")),
                                 (f"--supervised-steps {args.supervised_steps}",
                                  args.supervised_steps != parser.get_default("supervised_steps")),
                                 ("--naming-sweep", args.naming_sweep)) if given])
    title = "does the memory agent read which block failed? (counterfactual banks)" if rows else \
        "can the bank's path name the cell of the block a failure ended on? (supervised)"
    made_by = f"Made by `{command}`" + (
        f": of {args.num_test_levels} held-out two-block levels, the {', '.join(map(str, sorted(used)))} where a "
        "straight walk from the start reaches each block without passing the other. One greedy episode per "
        "level and bank, SNAIL fresh, as a test episode after the first: an empty bank; a bank holding a walk "
        "into the trap (true); one holding a walk into the goal (false, stored as a failure). Fractions of levels."
        if rows else ".")
    text = [f"# Gridworld: {title}", "", made_by]
    if rows:
        text += ["", "| agent | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS), *rows, "",
                 "E is the block the empty-bank episode walked to (levels where it hit one). An agent that reads which "
                 "block failed: the goal with the true bank, the trap with the false one, and 1.0 in the last three "
                 "columns. One that reads only that *a* block failed leaves E whatever the bank names: 1.0 in \"bank "
                 "names E\", 0 in \"bank names the other block\". One that ignores its bank: 0 and 1."]
    text.append("")
    if naming:
        text += ["## Can the bank's path name the failed block when told to?", "",
                 f"The same path with fresh weights (CNN -> Phi -> trajectory Transformer, the default sizes) and a "
                 f"linear layer, trained by cross-entropy for {args.supervised_steps} steps of 64 scripted walks on "
                 "training levels to output the cell of the block the walk failed on (Adam 1e-3); accuracy on walks "
                 "of the held-out levels, chance 1/62:", "",
                 "| frames of the walk | held-out accuracy |", "|---|---|",
                 *(f"| {frames} | {accuracy:.3f} |" for frames, accuracy in naming.items()), "",
                 "## Can the whole agent learn to recover when told how?", "",
                 f"The whole agent with fresh weights (the default sizes), trained by cross-entropy for "
                 f"{args.supervised_steps} steps of 64 cases: at a level's start, with a bank holding a walk into one "
                 "block, towards the moves that bring it nearer the other block. Only levels where no move is nearer "
                 "both blocks, so that a policy blind to its bank scores 0.5. Held-out share of levels whose most "
                 f"likely move is right: **{recovery[0]:.3f}** ({recovery[1]} of 2,000 held-out levels qualify).", ""]
    if sweep:
        text += sweep_section(sweep, args.supervised_steps)
    write_doc(Path(args.out), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
