"""Pictures of the UR reacher for docs/: what the policy sees at each picture size (enlarged) and
the same scenes at 256 x 256, for a few training levels, the target ball marked in the caption;
and how many pixels a ball covers at each size (issue: "measure what size still learns").

    python benchmark/reacher_frames.py --obs-sizes 16 24 32 64

Writes docs/reacher_frames.png and docs/reacher_frames.md. A ball's footprint is the number of
pixels that change when that ball alone is moved out of view, over the balls of `--footprint-levels`
training levels with the arm at its start pose.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pybullet as p

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reacher_failmem as rf  # noqa: E402

COLOUR_NAMES = ("red", "green", "blue")


def ball_footprints(env, num_levels):
    """Pixels each ball covers in `env`'s picture, one entry per ball of the first `num_levels` levels."""
    footprints = []
    for level in range(num_levels):
        frame, _ = env.reset(options={"level": level})
        for ball, centre in zip(env.balls, env.centres):
            p.resetBasePositionAndOrientation(ball, [0, 0, -10], [0, 0, 0, 1], physicsClientId=env.client)
            footprints.append(int((env.render() != frame).any(-1).sum()))
            p.resetBasePositionAndOrientation(ball, centre, [0, 0, 0, 1], physicsClientId=env.client)
    return np.array(footprints)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-sizes", type=int, nargs="+", default=[16, 24, 32, 64])
    parser.add_argument("--levels", type=int, default=4, help="levels pictured")
    parser.add_argument("--footprint-levels", type=int, default=200, help="levels whose balls are measured")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reacher_frames.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = rf.make_levels("train", max(args.levels, args.footprint_levels))
    sizes = [*args.obs_sizes, 256]
    envs = [rf.UR5Reacher(levels, size) for size in sizes]
    down = int(np.flatnonzero((rf.MOVES == [0, 0, -rf.STEP]).all(1))[0])
    fig, axes = plt.subplots(len(sizes), args.levels, figsize=(3 * args.levels, 3.2 * len(sizes)), squeeze=False)
    for level in range(args.levels):
        target = COLOUR_NAMES[levels["colours"][level][levels["goals"][level]]]
        for row, (size, env) in enumerate(zip(sizes, envs)):
            env.reset(options={"level": level})
            for _ in range(3):  # a few moves down, so the arm is not at its start pose
                env.step(down)
            axes[row, level].imshow(env.render(), interpolation="nearest" if size < 256 else None)
            caption = f"{size}px; target ball: {target} (hidden)" if size == 256 else f"level {level}: the policy's view, {size}px"
            axes[row, level].set_title(caption, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)

    rows = []
    for size, env in zip(args.obs_sizes, envs):
        footprint = ball_footprints(env, args.footprint_levels)
        rows.append(f"| {size} | {np.median(footprint):.0f} | {footprint.min()} | {footprint.max()} | "
                    f"{(footprint == 0).mean():.3f} |")
    table = Path(args.out).with_suffix(".md")
    table.write_text("\n".join([
        "# UR reacher: how many pixels a ball covers at each picture size", "",
        f"`python benchmark/reacher_frames.py --obs-sizes {' '.join(map(str, args.obs_sizes))}"
        f" --footprint-levels {args.footprint_levels}`", "",
        f"Pixels that change when one ball is moved out of view, over the {3 * args.footprint_levels} balls of "
        f"training levels 0-{args.footprint_levels - 1}, arm at its start pose (the arm may hide part of a ball). "
        f"Pictures: `{Path(args.out).name}`.", "",
        "| picture size (px) | median pixels per ball | fewest | most | share of balls not drawn at all |",
        "|---|---|---|---|---|", *rows, "",
    ]))
    for env in envs:
        env.close()
    print(args.out, table, *rows, sep="\n")


if __name__ == "__main__":
    main()
