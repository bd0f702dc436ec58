"""Which colours does an agent walk to? Its hits on held-out levels, episode by episode, by colour.

    python benchmark/grid_colour_bias.py runs/<run>/agent.pt [more checkpoints] [--levels 500] [--out docs/...md]

No colour marks the goal (each level draws its goal uniformly, its colours apart), so an agent that
reads the picture and the bank hits the palette's colours about equally often. One that learned a
colour somewhere, as the one-block stage of a curriculum teaches its only colour unless
`--block-colours` gives it more, walks to that colour first and, once it failed there, has nowhere
it knows how to go. Each checkpoint is run through grid_failmem.py's `evaluate()` (greedy, empty bank
at the start, 5 episodes) on the first `--levels` held-out levels of the task it was trained on.
"""

import argparse
import colorsys
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402

EPISODES_SHOWN = 2  # the first episode, and the one after it (a failed first one is the memory's cue)


def colour_name(rgb):
    return f"hue {round(colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0] * 360)}"


def hits_by_colour(levels, hits, palette):
    """(episodes, K): the share of each colour of the (K, 3) palette among the block hits of each episode."""
    colour_ids = [tuple(colour) for colour in palette]
    shares = np.zeros((hits.shape[1], len(palette)))
    for episode in range(hits.shape[1]):
        hit = np.flatnonzero(hits[:, episode] >= 0)
        colours = [colour_ids.index(tuple(levels["colours"][i, hits[i, episode]])) for i in hit]
        shares[episode] = np.bincount(colours, minlength=len(palette)) / max(len(hit), 1)
    return shares


def colour_bias(path, num_levels):
    """The checkpoint's agent on its own task: (its Args, evaluate()'s summary, its palette, and per episode the
    share of levels with a hit and the hits by colour)."""
    run = grid.Args(num_test_levels=num_levels)
    agent = grid.load_checkpoint(path, run, len(grid.MOVES), torch.device("cpu")).eval()
    levels = grid.task_levels(run, "test", num_levels)
    result = grid.evaluate(agent, run, levels, np.arange(num_levels), "cpu")
    palette = grid.block_palette(run.block_colours or run.num_blocks).astype(np.uint8)
    hit_rate, shares = (result["hits"] >= 0).mean(0), hits_by_colour(levels, result["hits"], palette)
    return run, grid.summarize(result, run.num_blocks), palette, hit_rate, shares


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--levels", type=int, default=500, help="held-out levels (the first ones)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_colour_bias.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for path in args.checkpoints:
        run, summary, palette, hit_rate, shares = colour_bias(path, args.levels)
        by_colour = [", ".join(f"{colour_name(c)} {s:.2f}" for c, s in zip(palette, shares[k]))
                     for k in range(EPISODES_SHOWN)]
        rows.append(f"| `{path}` | W {run.grid_size}, X {run.num_blocks}, K {len(palette)} | {summary['mean_success']:.3f} "
                    f"| {summary['goal_after_first_failure']:.3f} | "
                    + " | ".join(f"{hit_rate[k]:.2f} | {by_colour[k]}" for k in range(EPISODES_SHOWN)) + " |")
        print(rows[-1])
    text = "\n".join([
        "# Gridworld: which colours the agents walk to", "",
        f"Made by `python benchmark/grid_colour_bias.py {' '.join(args.checkpoints)} --levels {args.levels}`.", "",
        f"Greedy test on the first {args.levels} held-out levels of each agent's own task (W x W grid, X blocks, colours "
        "drawn from a palette of K), empty bank at the start, 5 episodes. Hit: the share of levels whose episode hit "
        "a block; by colour: the share of each palette colour among those hits (the goal's colour is uniform, so "
        "1/K each for an agent with no colour of its own). Goal after a first failure: of the levels whose episode 1 "
        "missed the goal, the share whose episode 2 reached it.", "",
        "| checkpoint | task | mean success | goal after a first failure | episode 1: hit | episode 1: hits by colour "
        "| episode 2: hit | episode 2: hits by colour |",
        "|---|---|---|---|---|---|---|---|",
        *rows, "",
    ])
    write_doc(Path(args.out), text)


if __name__ == "__main__":
    main()
