"""Pictures of the UR reacher for docs/: what the policy sees (obs-size frames, enlarged) and
the same scenes at 256 x 256, for a few training levels, the target ball marked in the caption.

    python benchmark/reacher_frames.py --obs-size 64

Writes docs/reacher_frames.png.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reacher_failmem as rf  # noqa: E402

COLOUR_NAMES = ("red", "green", "blue")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-size", type=int, default=64)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "docs" / "reacher_frames.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = rf.make_levels("train", args.levels)
    small, big = rf.UR5Reacher(levels, args.obs_size), rf.UR5Reacher(levels, 256)
    down = int(np.flatnonzero((rf.MOVES == [0, 0, -rf.STEP]).all(1))[0])
    fig, axes = plt.subplots(2, args.levels, figsize=(3 * args.levels, 6.4))
    for level in range(args.levels):
        for env in (small, big):
            env.reset(options={"level": level})
            for _ in range(3):  # a few moves down, so the arm is not at its start pose
                env.step(down)
        target = COLOUR_NAMES[levels["colours"][level][levels["goals"][level]]]
        axes[0, level].imshow(small.render(), interpolation="nearest")
        axes[0, level].set_title(f"level {level}: what the policy sees ({args.obs_size}px)", fontsize=8)
        axes[1, level].imshow(big.render())
        axes[1, level].set_title(f"256px; target ball: {target} (hidden from the agent)", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
