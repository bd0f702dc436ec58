"""What does the agent do when a level comes back with the failures an earlier visit left in its bank?

    python benchmark/grid_bank_history.py runs/<run>/agent.pt [more checkpoints] --out docs/grid_bank_history.md

In training a level drawn again starts its trial with the bank its earlier trials filled (a 6M-step run at 480
envs draws 75,000 trials from 40,000 levels: by its end 85% of the levels drawn have been drawn before); at test
every bank starts empty. For each checkpoint, greedy and with actions drawn from the policy (`--eval-sample`):
visit 1 is the paper's test (5 episodes from an empty bank, each failure entering the bank); visit 2 is one more
episode on each level from the bank visit 1 left. Its outcome (the goal, a trap visit 1 hit, a trap it did not
hit, no block within the step limit) is counted per kind of bank: the distinct traps visit 1 hit, and whether
the bank also holds a timed-out episode (80 steps that touched nothing: a failure by DESIGN.md). Where it does,
visit 2 is run again from the same bank with the timed-out episodes taken out: the same levels and traps, one
difference, which says whether storing timeouts is what leaves the agent lost. Visit 2 continues visit 1, so a level whose visit 1 ended at the
goal meets the bank that led there (greedy, the same walk again). With X = 3 the Bayes-optimal agent reaches the
goal in 1/2 of the visits after one trap hit and in all of them after two. Writes the table into --out (a
hand-written reading there is kept).
"""

import argparse
import copy
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402

OUTCOMES = ("goal", "a trap hit before", "a trap not hit before", "no block")


def timed_out(trajectory):
    """A stored episode that ran its step limit: its last step's reward is 0, where a trap's is -1."""
    _, _, rewards, valid = trajectory
    return rewards[valid][-1] == 0


def bank_kinds(banks, result, level_ids):
    """Per level: (distinct traps visit 1 hit, whether its bank holds a timed-out episode)."""
    hit_traps = [set(h[(h >= 0) & ~s].tolist()) for h, s in zip(result["hits"], result["success"])]
    with_timeout = [any(map(timed_out, banks[0].banks.get(level, ()))) for level in level_ids]
    return hit_traps, np.array(with_timeout)


def without_timeouts(banks):
    """A copy of the banks with every timed-out episode taken out of the failure bank (the others as they are)."""
    cleaned = copy.deepcopy(banks)
    failures = cleaned[0]
    for level, trajectories in failures.banks.items():
        failures.banks[level] = [t for t in trajectories if not timed_out(t)]
    failures.num_trajectories = sum(len(t) for t in failures.banks.values())
    return cleaned


def outcome_counts(hit, success, known):
    """Counts of OUTCOMES over levels: `hit` and `success` of one episode each, `known` the traps hit before."""
    return np.array([success.sum(),
                     sum(h >= 0 and not s and h in k for h, s, k in zip(hit, success, known)),
                     sum(h >= 0 and not s and h not in k for h, s, k in zip(hit, success, known)),
                     (hit < 0).sum()])


def table_row(label, counts):
    total = counts.sum()
    shares = " | ".join(f"{c / total:.3f}" if total else "-" for c in counts)
    return f"| {label} | {total} | {shares} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num-test-levels", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_bank_history.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = []
    for path in args.checkpoints:
        run_args = grid.Args(num_test_levels=args.num_test_levels)
        agent = grid.load_checkpoint(path, run_args, len(grid.MOVES), torch.device("cpu")).eval()
        if not agent.use_memory:
            sys.exit(f"grid_bank_history.py: error: {path} holds a {run_args.agent} agent, which has no bank")
        levels = grid.task_levels(run_args, "test", args.num_test_levels)
        level_ids = np.arange(args.num_test_levels)
        obs_shape = (run_args.obs_size, run_args.obs_size, 3)
        rows = []
        for sample in (False, True):
            run_args.eval_sample = sample
            one_episode = copy.copy(run_args)  # visit 2: the same reading, one episode
            one_episode.eval_episodes = 1
            banks = grid.make_banks(run_args, obs_shape, float("inf"))
            first = grid.evaluate(agent, run_args, levels, level_ids, "cpu", banks=banks)
            known, has_timeout = bank_kinds(banks, first, level_ids)
            without = without_timeouts(banks)  # before visit 2 adds to `banks`
            again = grid.evaluate(agent, one_episode, levels, level_ids, "cpu", banks=banks)
            cleaned = grid.evaluate(agent, one_episode, levels, level_ids, "cpu", banks=without)
            reading = "sampled" if sample else "greedy"
            rows.append(table_row(f"{reading}: visit 1, episode 1 (empty bank)",
                                  outcome_counts(first["hits"][:, 0], first["success"][:, 0], [set()] * len(level_ids))))
            num_known = np.array([len(k) for k in known])
            for traps in range(run_args.num_blocks):
                plural = "s" if traps != 1 else ""
                for with_timeout in (False, True):
                    chosen = (num_known == traps) & (has_timeout == with_timeout)
                    chosen_known = [k for k, c in zip(known, chosen) if c]
                    kind = f"{traps} trap{plural} hit" + (", a timeout" if with_timeout else "")
                    rows.append(table_row(f"{reading}: visit 2 after {kind}", outcome_counts(
                        again["hits"][chosen, 0], again["success"][chosen, 0], chosen_known)))
                    if with_timeout:
                        rows.append(table_row(f"{reading}: ... the same levels, the timeouts taken out of the bank",
                                              outcome_counts(cleaned["hits"][chosen, 0], cleaned["success"][chosen, 0],
                                                             chosen_known)))
        sections += [f"`{Path(path).parent.name}` (W {run_args.grid_size}, X {run_args.num_blocks}):", "",
                     "| episode | levels | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES),
                     *rows, ""]
    command = "python benchmark/grid_bank_history.py " + shlex.join(sys.argv[1:])  # as typed
    text = ["# Gridworld: a level that comes back with its bank, as in training", "",
            f"Made by `{command}`: {args.num_test_levels} held-out levels. Visit 1 is the paper's test (5 episodes "
            "from an empty bank); visit 2 is one more episode from the bank visit 1 left, counted by what that bank "
            "holds: the distinct traps visit 1 hit, and whether a timed-out episode (80 steps, no block) is in it.",
            "With X = 3 the Bayes-optimal agent reaches the goal in 1/2 of the visits after one trap hit and in all "
            "of them after two.", "", *sections]
    write_doc(Path(args.out), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
