"""The helpers benchmark/learning.py draws its figures with: averaging seeds measured at
different steps and times must not shift or stretch any seed's curve."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmark"
sys.path.insert(0, str(BENCH))
from learning import mean_and_spread, on_common_minutes, smooth  # noqa: E402


def test_mean_and_spread_cuts_seeds_to_the_shortest():
    steps = np.arange(5) * 10
    short, long = (steps[:3], np.array([0.0, 1.0, 2.0])), (steps, np.array([2.0, 3.0, 4.0, 5.0, 6.0]))
    at, mean, low, high = mean_and_spread([short, long])
    assert at.tolist() == [0, 10, 20]
    assert mean.tolist() == [1.0, 2.0, 3.0]
    assert low.tolist() == [0.0, 1.0, 2.0] and high.tolist() == [2.0, 3.0, 4.0]


def test_on_common_minutes_interpolates_each_seed_onto_one_grid():
    # two seeds of the same linear curve, evaluated at different wall-clock times
    first = (np.array([1.0, 3.0, 5.0, 9.0]), np.array([0.1, 0.3, 0.5, 0.9]))
    second = (np.array([2.0, 4.0, 7.0]), np.array([0.2, 0.4, 0.7]))
    curves = on_common_minutes([first, second], points=11)
    grid = curves[0][0]
    assert grid[0] == 1.0 and grid[-1] == 7.0  # up to where the shortest seed ends
    assert all(np.array_equal(minutes, grid) for minutes, _ in curves)
    np.testing.assert_allclose(curves[0][1], grid / 10)
    # before its first evaluation a seed holds its first value, it is not extrapolated
    np.testing.assert_allclose(curves[1][1], np.maximum(grid, 2.0) / 10)


def test_smooth_is_a_trailing_mean():
    values = np.arange(12, dtype=float)
    smoothed = smooth(values, width=10)
    assert len(smoothed) == 3
    np.testing.assert_allclose(smoothed, [4.5, 5.5, 6.5])


def test_collapse_step_is_where_the_smoothed_success_stays_low():
    from reacher_collapse import COLLAPSED, collapse_step

    steps = np.arange(1, 41) * 1280
    learning = np.full(40, 0.3)
    assert collapse_step(steps, learning) is None  # ends above: not collapsed
    fell = np.concatenate([np.full(20, 0.3), np.zeros(20)])
    # the 10-update mean first drops below COLLAPSED once the window holds no 0.3: update 30
    assert collapse_step(steps, fell) == steps[29]
    assert collapse_step(steps, np.zeros(40)) == steps[9]  # low from its first smoothed value on
    blip = fell.copy()
    blip[25] = 10 * COLLAPSED  # one good update late on: the collapse is dated from the window past it
    assert collapse_step(steps, blip) == steps[35]
    assert collapse_step(steps[:5], np.zeros(5)) is None  # too short to smooth


def test_write_doc_keeps_the_hand_written_reading(tmp_path):
    from learning import write_doc

    doc = tmp_path / "env_tag.md"
    write_doc(doc, "# table v1\n")
    assert doc.read_text() == "# table v1\n"
    doc.write_text(doc.read_text() + "## Reading (written by hand)\n\n- what the runs show\n")
    write_doc(doc, "# table v2\n")  # a redraw replaces the table and keeps the reading
    assert doc.read_text() == "# table v2\n## Reading (written by hand)\n\n- what the runs show\n"


def test_ladder_levers_join_in_order_and_runs_of_each_doc_keep_apart():
    import grid_ladder

    assert grid_ladder.lever_flags("lr1e-3+epochs8") == ["--learning-rate", "1e-3", "--update-epochs", "8"]
    assert grid_ladder.lever_flags("epochs8+epochs16")[-1] == "16"  # a later lever wins
    names = {grid_ladder.exp_name("L3", "memory", name) for name in (None, "w8", "w16")}
    assert len(names) == 3 and grid_ladder.exp_name("L1", "a+b") == "ladder_L1_a_b"


def test_ladder_names_a_lever_part_that_changes_nothing_before_any_run(tmp_path):
    """--update-epochs 8 is grid_failmem.py's default: an `epochs8` lever on rung L2 reran the base
    bit for bit. Such a part, or one a later part overrides, stops the script with one line; the
    agent levers stay allowed, since they name the agents a comparison is between."""
    import grid_ladder

    rung = grid_ladder.RUNGS["L2"][0]
    assert grid_ladder.idle_parts(rung, "envs480+levels40000+epochs8") == ["epochs8"]
    assert grid_ladder.idle_parts(rung, "epochs16+epochs8") == ["epochs16"]
    assert grid_ladder.idle_parts(rung, "envs480+epochs16") == [] and grid_ladder.idle_parts(rung, "defaults") == []
    assert grid_ladder.idle_parts(rung, "ppo-finetune") == []  # the rung's agent, named
    out = subprocess.run([sys.executable, str(BENCH / "grid_ladder.py"), "--rung", "L2", "--levers", "envs480+epochs8",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "'epochs8' (--update-epochs 8) changes nothing" in out.stderr.splitlines()[-1]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.iterdir())


def test_ladder_finds_a_run_one_update_short_of_its_budget_at_the_levers_batch(tmp_path, monkeypatch):
    import argparse

    import grid_ladder

    # a 480-env run of 3M steps logs its last update at 2,995,200 (78 updates of 38,400 steps), 4,800 short
    budget, steps = 3_000_000, {"a": 2_995_200, "b": 2_995_200 - 38_400}
    monkeypatch.setattr(grid_ladder, "ROOT", tmp_path)
    monkeypatch.setattr(grid_ladder, "last_step", lambda run: steps[run.rsplit("__", 1)[1]])
    for seed, tail in ((1, "a"), (2, "b")):
        (tmp_path / "runs" / f"grid__ladder_L2_x_envs480__ppo-finetune__{seed}__{tail}").mkdir(parents=True)
        (tmp_path / "runs" / f"grid__ladder_L2_x_defaults__ppo-finetune__{seed}__{tail}").mkdir(parents=True)
    args = argparse.Namespace(rung="L2", name="x", seeds=[1, 2], total_timesteps=budget, stopped=False, extra=[])
    assert [run[-1] for run in grid_ladder.runs_of(args, "envs480")] == ["a"]  # one update short, not two
    assert grid_ladder.runs_of(args, "defaults") == []  # at 48 envs, 4,800 steps short is more than an update
    assert len(grid_ladder.runs_of(argparse.Namespace(**{**vars(args), "stopped": True}), "defaults")) == 2


def test_episode_rise_is_later_episodes_minus_the_first_averaged_over_evaluations():
    import grid_ladder

    evaluations = [[0.1, 0.3, 0.3, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2], [0.3, 0.1, 0.2, 0.3, 0.0]]
    assert grid_ladder.episode_rise(evaluations) == pytest.approx((0.2 + 0.0 - 0.15) / 3)
    assert grid_ladder.episode_rise([[0.3] * 5]) == 0.0


def test_learning_curves_read_agent_at_exp_name_runs_and_refuse_them_when_training(monkeypatch, capsys):
    import argparse

    import learning

    args = argparse.Namespace(agents=["memory@ladder_L3_x", "snail"], vary=None, tag="fig3")
    assert learning.curves(args) == [("memory", "memory", [], "ladder_L3_x"), ("snail", "snail", [], "fig3")]
    monkeypatch.setattr(sys, "argv", ["learning.py", "--agents", "memory@ladder_L3_x"])  # no --plot-only
    with pytest.raises(SystemExit):
        learning.main()
    assert "--plot-only" in capsys.readouterr().err


def test_an_agent_drawn_twice_is_labelled_with_its_exp_name():
    import argparse

    import learning

    args = argparse.Namespace(agents=["memory@x2_aux", "memory@x2_lr", "snail@x2_lr"], vary=None, tag="fig3")
    assert [label for label, *_ in learning.curves(args)] == ["memory@x2_aux", "memory@x2_lr", "snail"]


def test_learning_reads_a_run_up_to_the_step_asked(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    import learning

    run = tmp_path / "grid__x__memory__1__1700000000"
    writer = SummaryWriter(str(run))
    for step in (100, 200, 300):
        writer.add_scalar("eval/mean_success", step / 1000, step)
    writer.close()
    assert learning.scalars(run, "eval/mean_success")[0].tolist() == [100, 200, 300]
    steps, values = learning.scalars(run, "eval/mean_success", until=250)
    assert steps.tolist() == [100, 200] and values.tolist() == pytest.approx([0.1, 0.2])


def test_learning_times_a_resumed_run_without_its_pause(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    import learning

    start, resumed = 1700000000, 1700007200  # stopped after 2 minutes, resumed two hours later
    run = tmp_path / f"grid__x__memory__1__{start}"
    for piece, (stamp, points) in enumerate(((start, ((100, 60), (200, 120))), (resumed, ((300, 30), (400, 90))))):
        writer = SummaryWriter(str(run))
        for step, seconds in points:
            writer.add_scalar("eval/mean_success", step / 1000, step, walltime=stamp + seconds)
        writer.close()
        (written,) = [path for path in run.glob("events.out.tfevents.*") if ".renamed." not in path.name]
        # the name stamp a resume writes
        written.rename(run / f"events.out.tfevents.{stamp}.renamed.{piece}.0")
    minutes, values = learning.scalars(run, "eval/mean_success", minutes=True)
    assert minutes.tolist() == pytest.approx([1.0, 2.0, 2.5, 3.5]) and values.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_ladder_reads_the_grid_of_its_runs_from_their_flags():
    import grid_ladder

    assert grid_ladder.grid_flags(grid_ladder.RUNGS["L3"][0]) == (16, 3)  # the ladder's runs pin the paper's task
    assert grid_ladder.grid_flags(["--num-blocks", "3", "--grid-size", "8", "--num-blocks", "2"]) == (8, 2)


def test_recovery_counts_what_follows_a_success_and_a_trap():
    from grid_recovery import next_episode_outcomes

    # level 0: trap 1, the same trap, then the goal (block 0) twice; level 1: goal, goal, no hit, trap 2, goal
    success = np.array([[0, 0, 1, 1, 0], [1, 1, 0, 0, 1]], bool)
    hits = np.array([[1, 1, 0, 0, -1], [0, 0, -1, 2, 0]])
    stuck = np.array([[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]], bool)  # only what follows a trap counts
    after_success, after_trap, outcomes = next_episode_outcomes(success, hits, stuck)
    assert (after_success, after_trap) == (4, 3)  # a no-hit episode is neither
    assert outcomes["stuck after a trap"] == 0.0
    assert outcomes["goal again after a success"] == 2 / 4  # the goal twice in a row once per level
    assert outcomes["same trap after a trap"] == 1 / 3
    assert outcomes["goal after a trap"] == 2 / 3
    assert outcomes["another trap after a trap"] == 0.0 and outcomes["no block after a trap"] == 0.0


def test_recovery_after_two_traps_tells_the_older_trap_from_the_goal():
    from grid_recovery import after_two_traps

    # the goal is block 0. Level 0: traps 1, 2, 1, 2, then the goal: episodes 3 and 4 go back to the older trap,
    # episode 5 (after 1 then 2) reaches the goal. Level 1: trap 1 twice (not two different), then the goal.
    success = np.array([[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]], bool)
    hits = np.array([[1, 2, 1, 2, 0], [1, 1, 0, 0, 0]])
    count, outcomes = after_two_traps(success, hits)
    assert count == 3  # level 0's episodes 3, 4 and 5
    assert outcomes["the older trap after two"] == 2 / 3 and outcomes["goal after two traps"] == 1 / 3
    assert outcomes["the last trap after two"] == 0.0 and outcomes["no block after two traps"] == 0.0
    none, empty = after_two_traps(success[1:], hits[1:])
    assert none == 0 and np.isnan(empty["goal after two traps"])


def test_an_episode_is_stuck_when_it_ends_on_few_cells_without_a_hit():
    from grid_recovery import STUCK_STEPS, StuckGridWorld

    levels = dict(starts=np.array([[0, 0]]), blocks=np.array([[[7, 7], [7, 6], [6, 7]]]),
                  colours=np.full((1, 3, 3), 100, np.uint8), goals=np.array([0]))
    env = StuckGridWorld(levels, 4, grid_size=8, obs_size=8, max_episode_steps=80)
    env.set_levels(np.zeros(4, np.int64))
    left, right, up, down = 0, 1, 2, 3
    rectangle = [right] * 7 + [down] * 3 + [left] * 7 + [up] * 3  # 20 cells of rows 0-3, clear of the blocks
    for t in range(80):  # 0: pushes into the border; 1: steps right and back; 2: a lap of 4 cells; 3: a lap of 20
        env.step(np.array([up, right if t % 2 == 0 else left, (right, down, left, up)[t % 4], rectangle[t % 20]]))
    assert env.stuck == [[True], [True], [False], [False]] and STUCK_STEPS == 40
    # an episode that ends on a block is not stuck, however long the agent stood before
    env.set_levels(np.zeros(4, np.int64))
    env.agent[0] = [7, 5]
    for _ in range(STUCK_STEPS):
        env.step(np.array([down, up, up, up]))
    env.step(np.array([right, up, up, up]))
    assert env.stuck[0] == [True, False]


def test_bank_probe_walks_straight_into_the_named_block_around_the_other():
    import grid_bank_probe as probe
    import grid_failmem as grid

    assert probe.straight_walk((0, 0), (2, 1), avoid={(9, 9)}) == [3, 3, 1]  # rows first: down, down, right
    assert probe.straight_walk((0, 0), (2, 1), avoid={(1, 0)}) == [1, 3, 3]  # the other block in the way: columns first
    assert probe.straight_walk((0, 0), (2, 2), avoid={(1, 0), (0, 1)}) is None
    levels = dict(starts=np.array([[0, 0]]), blocks=np.array([[[0, 3], [5, 5]]]),
                  colours=grid.block_palette(2).astype(np.uint8)[None], goals=np.array([1]))
    args = grid.Args(grid_size=8, num_blocks=2, obs_size=8)
    for after, last_cell in ((False, (0, 2)), (True, (0, 3))):
        frames, actions, rewards = probe.scripted_failure(levels, 0, 0, args, after)
        assert actions.tolist() == [1, 1, 1] and rewards.tolist() == [0, 0, grid.TRAP_REWARD]
        assert tuple(np.argwhere((frames[-1] == grid.AGENT_RGB).all(-1))[0]) == last_cell


def test_bank_probe_tells_an_agent_that_reads_the_block_from_one_that_switches():
    import grid_bank_probe as probe

    goals = np.array([0, 1, 0, 1])
    empty = np.array([0, 0, 1, 1])  # the block each level's empty-bank episode walks to
    reader = {None: empty, 0: np.ones(4, int), 1: np.zeros(4, int)}  # always the block the bank does not name
    switcher = {None: empty, 0: 1 - empty, 1: 1 - empty}  # leaves its block whatever the bank names
    cells = lambda hits: [float(c) for c in probe.row("x", goals, hits).strip("| ").split(" | ")[1:]]  # noqa: E731
    assert cells(reader)[2] == 1.0 and cells(reader)[5] == 1.0 and cells(reader)[-3:] == [1.0, 1.0, 1.0]
    assert cells(switcher)[-3:] == [1.0, 0.0, 0.0]


def test_bank_probe_naming_sweep_tabulates_each_cnn_per_grid_and_needs_something_to_do(monkeypatch):
    import grid_bank_probe as probe

    naming = np.array([0.1, 0.3, 0.2])
    sweep = {(size, cnn): np.stack([naming * size / 8, np.full(3, 0.5)], 1) for size in probe.SWEEP_GRIDS for cnn in probe.SWEEP_CNNS}
    lines = probe.sweep_section(sweep, 500)
    rows = [line for line in lines if line.startswith("| 16")]
    assert [row.split(" | ")[1] for row in rows] == ["2 x 2", "4 x 4", "8 x 8"]  # 16 px halved per stage
    cells = rows[0].strip("| ").split(" | ")[2:]  # W8 naming, W8 recovery, W16 naming, W16 recovery
    assert cells == ["0.200 ± 0.082 (0.10, 0.30, 0.20)", "0.500 ± 0.000 (0.50, 0.50, 0.50)",
                     "0.400 ± 0.163 (0.20, 0.60, 0.40)", "0.500 ± 0.000 (0.50, 0.50, 0.50)"]
    monkeypatch.setattr(sys, "argv", ["grid_bank_probe.py"])
    with pytest.raises(SystemExit):
        probe.main()


def test_budget_recovery_is_logged_or_exact_from_episodes_1_and_2(monkeypatch):
    import grid_budget

    logs = {"eval/success_ep1": [0.4, 0.5], "eval/success_ep2": [0.55, 0.9], "eval/mean_success": [0.6, 0.7]}
    monkeypatch.setattr(grid_budget, "scalars", lambda run, tag: (np.array([1, 2]), np.array(logs.get(tag, []))))
    steps, recovery = grid_budget.metric_points("run", "recovery")
    assert np.allclose(recovery, [0.25, 0.8])  # (s2 - s1) / (1 - s1): after a success a greedy agent repeats it
    logs["eval/goal_after_first_failure"] = [0.3, 0.7]
    assert np.allclose(grid_budget.metric_points("run", "recovery")[1], [0.3, 0.7])
    assert np.allclose(grid_budget.metric_points("run", "mean")[1], [0.6, 0.7])


def test_budget_sets_a_finished_runs_final_evaluation_apart():
    from grid_budget import bayes_line, split_final

    steps, values = np.array([100, 200, 250]), np.array([0.2, 0.3, 0.5])
    periodic_steps, periodic_values, final = split_final(steps, values, planned=250)
    assert list(periodic_steps) == [100, 200] and list(periodic_values) == [0.2, 0.3] and final == (250, 0.5)
    # started for 300 steps and still going, its last update evaluated (on the periodic set): every point is periodic
    assert split_final(steps, values, planned=300)[2] is None
    assert bayes_line("mean", 3) == pytest.approx(0.8) and bayes_line("mean", 2) == pytest.approx(0.9)
    assert bayes_line("recovery", 2) == 1.0 and bayes_line("recovery", 3) == 0.5


def test_planned_steps_reads_the_hyperparameters_a_run_logged_at_its_start(tmp_path):
    from learning import planned_steps
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n|num_iterations|390|\n|batch_size|38400|\n"
                                       "|cnn_channels|(16, 32, 32)|")
    writer.add_scalar("charts/SPS", 1.0, 38400)
    writer.close()
    assert planned_steps(tmp_path / "run") == 14_976_000
    writer = SummaryWriter(str(tmp_path / "bare"))
    writer.add_scalar("charts/SPS", 1.0, 38400)
    writer.close()
    assert planned_steps(tmp_path / "bare") is None


def test_budget_draws_a_second_stage_after_the_run_it_started_from(tmp_path, monkeypatch, capsys):
    import grid_budget

    for run in ("grid__first__memory__1__10", "grid__stage__memory__1__20"):
        (tmp_path / "runs" / run).mkdir(parents=True)
    logs = {"first": {"eval/mean_success": ([1_000_000, 2_000_000], [0.2, 0.3]), "charts/SPS": ([2_000_000], [5.0])},
            "stage": {"eval/mean_success": ([500_000, 1_000_000, 1_500_000, 2_000_000], [0.4, 0.5, 0.55, 0.6]),
                      "charts/SPS": ([2_000_000], [5.0])}}
    monkeypatch.setattr(grid_budget, "ROOT", tmp_path)
    monkeypatch.setattr(grid_budget, "scalars",
                        lambda run, tag: tuple(np.array(x) for x in logs[run.split("__")[1]][tag]))
    monkeypatch.setattr(grid_budget, "planned_steps", lambda run: logs[run.split("__")[1]]["charts/SPS"][0][-1])
    argv = ["grid_budget.py", "--metric", "mean", "--num-blocks", "3", "--exp-names", "first", "stage",
            "--target", "0.9", "--out", str(tmp_path), "--after"]
    monkeypatch.setattr(sys, "argv", argv + ["stage=first"])
    grid_budget.main()
    doc = (tmp_path / "grid_budget.md").read_text()
    # the stage's points follow the first run's last step (2M); its last one is its final evaluation
    assert "| stage | memory | 1 | 4,000,000 | 2.50M: 0.40, 3.00M: 0.50, 3.50M: 0.55 | 0.600 |" in doc
    # its later half is counted from where it started (2M), not from step 0: the points at 3.0M and 3.5M
    assert "| stage | memory | 1 | all | +0.150 |" in doc and "| stage | memory | 1 | second half | +0.100 |" in doc
    assert "| first | memory | 1 | 2,000,000 | 1.00M: 0.20 | 0.300 |" in doc
    assert "--after stage=first" in doc
    for bad in ("stage", "stage=", "=first"):
        monkeypatch.setattr(sys, "argv", argv + [bad])
        with pytest.raises(SystemExit):
            grid_budget.main()
        assert "--after takes STAGE=FIRST" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", argv + ["stage=absent"])  # no run of the first stage for the stage's seed
    with pytest.raises(SystemExit, match="needs one run of absent memory seed 1, found 0"):
        grid_budget.main()


def test_budget_fits_the_final_tests_of_runs_from_scratch_against_their_budget(tmp_path, monkeypatch):
    import grid_budget

    for run in ("grid__short__memory__1__10", "grid__long__memory__1__20", "grid__long__memory__2__21",
                "grid__long__memory__3__22", "grid__stage__memory__1__30"):
        (tmp_path / "runs" / run).mkdir(parents=True)
    logs = {"short": {"eval/mean_success": ([500_000, 1_000_000], [0.2, 0.3]), "charts/SPS": ([1_000_000], [5.0])},
            "long": {"eval/mean_success": ([500_000, 1_000_000, 2_000_000], [0.2, 0.3, 0.5]),
                     "charts/SPS": ([2_000_000], [5.0])},
            "stage": {"eval/mean_success": ([500_000, 1_000_000], [0.7, 0.8]), "charts/SPS": ([1_000_000], [5.0])}}
    unevaluated = {"eval/mean_success": ([], []), "charts/SPS": ([], [])}  # long's seed 2: started, nothing logged yet
    # long's seed 3: still going at 1.5M of its 2M steps, its last update evaluated on the periodic set
    going = {"eval/mean_success": ([500_000, 1_000_000, 1_500_000], [0.1, 0.2, 0.25]), "charts/SPS": ([1_500_000], [5.0])}
    of_run = lambda run: {("long", "2"): unevaluated, ("long", "3"): going}.get(  # noqa: E731
        (run.split("__")[1], run.split("__")[3]), logs[run.split("__")[1]])

    monkeypatch.setattr(grid_budget, "ROOT", tmp_path)
    monkeypatch.setattr(grid_budget, "scalars", lambda run, tag: tuple(np.array(x) for x in of_run(run)[tag]))
    monkeypatch.setattr(grid_budget, "planned_steps", lambda run: logs[run.split("__")[1]]["charts/SPS"][0][-1])
    monkeypatch.setattr(sys, "argv", ["grid_budget.py", "--metric", "mean", "--num-blocks", "3", "--exp-names",
                                      "short", "long", "stage", "--after", "stage=long", "--target", "0.9",
                                      "--out", str(tmp_path)])
    grid_budget.main()
    doc = (tmp_path / "grid_budget.md").read_text()
    # finals 0.3 at 1M and 0.5 at 2M; the second stage's 0.8 (at 3M) is not a run of 3M from scratch, and the
    # running seed 3's 0.25 at 1.5M not a final test
    assert "| memory | 2 | 1.0M, 2.0M | straight | +0.200 per 1M steps | 4,000,000 |" in doc
    assert "| memory | 2 | 1.0M, 2.0M | in log steps | +0.200 per doubling | 8,000,000 |" in doc
    assert "| long | memory | 2 | all |" in doc  # seeds 1 and 3; the run with no evaluation is not counted
    assert "| long | memory | 3 | 1,500,000 | 0.50M: 0.10, 1.00M: 0.20, 1.50M: 0.25 | - |" in doc
    monkeypatch.setattr(sys, "argv", ["grid_budget.py", "--metric", "mean", "--num-blocks", "3", "--exp-names",
                                      "long", "--target", "0.9", "--out", str(tmp_path)])
    grid_budget.main()  # one budget: no line through the final tests
    assert "final whole-set tests" not in (tmp_path / "grid_budget.md").read_text()


def test_recovery_doc_names_the_bayes_line_of_its_grid():
    from grid_recovery import bayes_line

    assert "X = 2" in bayes_line(2) and "every episode after one" in bayes_line(2)
    assert "1/2 of the episodes after a first failure" in bayes_line(3)


@pytest.mark.parametrize("num_blocks", [2, 3])
def test_recovery_doc_tabulates_two_traps_only_where_a_grid_has_three_blocks(tmp_path, monkeypatch, num_blocks):
    import torch

    import grid_failmem as grid
    import grid_recovery

    trained_as = grid.Args(grid_size=8, num_blocks=num_blocks, embed_dim=16, trial_len=12, eval_envs=4)
    path = tmp_path / "agent.pt"
    torch.save(dict(args=vars(trained_as), model=grid.Agent(trained_as, len(grid.MOVES)).state_dict()), path)
    out = tmp_path / "recovery.md"
    monkeypatch.setattr(sys, "argv", ["grid_recovery.py", str(path), "--num-test-levels", "4", "--out", str(out)])
    grid_recovery.main()
    text = out.read_text()
    assert f"--num-test-levels 4 --out {out}" in text  # the Made-by line is the command as typed
    assert ("After two different traps" in text) == (num_blocks >= 3)


def test_transfer_tests_a_two_block_agent_on_three_blocks(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_transfer

    trained_as = grid.Args(grid_size=8, num_blocks=2, embed_dim=16, trial_len=12, eval_episodes=2, eval_envs=4)
    path = tmp_path / "agent.pt"
    torch.save(dict(args=vars(trained_as), model=grid.Agent(trained_as, len(grid.MOVES)).state_dict()), path)
    trained, summary = grid_transfer.transfer(str(path), num_blocks=3, num_levels=4)
    assert (trained.num_blocks, trained.grid_size, trained.embed_dim) == (2, 8, 16)
    assert summary["bayes_optimal_mean"] == pytest.approx(np.mean([1 / 3, 2 / 3, 1, 1, 1]))  # three blocks tested
    assert 0 <= summary["mean_success"] <= 1


def test_test_readings_hand_each_reading_its_flags_and_its_levels(tmp_path, monkeypatch, capsys):
    import torch

    import grid_failmem as grid
    import grid_test_readings

    seen = []

    def evaluate(agent, args, levels, level_ids, device):  # what each reading hands the run's own evaluate()
        split = [name for name in ("test", "train") if np.array_equal(levels["blocks"], grid.make_levels(
            name, len(level_ids), args.grid_size, args.num_blocks)["blocks"])]
        seen.append((agent.use_memory, args.test_history, args.eval_sample, args.num_blocks, len(level_ids), *split))
        return dict(success=np.ones((len(level_ids), 5), bool), hits=np.zeros((len(level_ids), 5), int),
                    returns=np.zeros(len(level_ids)))

    monkeypatch.setattr(grid_test_readings.grid, "evaluate", evaluate)
    paths = {}
    for agent in ("memory", "snail"):
        trained_as = grid.Args(agent=agent, grid_size=8, num_blocks=3, embed_dim=16, num_train_levels=9)
        paths[agent] = tmp_path / f"{agent}.pt"
        torch.save(dict(args=vars(trained_as), model=grid.Agent(trained_as, len(grid.MOVES)).state_dict()),
                   paths[agent])
    trained, memory = grid_test_readings.readings_of(str(paths["memory"]), num_levels=7)
    assert trained.embed_dim == 16 and trained.num_train_levels == 9
    assert list(memory) == [name for name, _ in grid_test_readings.READINGS.values()]
    _, snail = grid_test_readings.readings_of(str(paths["snail"]), num_levels=7, readings=("greedy", "trial", "sampled"))
    assert list(snail) == ["greedy (the defaults)", "sampled"]  # SNAIL's test always reads the whole trial
    assert seen == [(True, "episode", False, 3, 7, "test"), (True, "trial", False, 3, 7, "test"),
                    (True, "episode", True, 3, 7, "test"), (True, "episode", False, 3, 7, "train"),
                    (False, "episode", False, 3, 7, "test"), (False, "episode", True, 3, 7, "test")]
    assert memory["sampled"]["mean_success"] == 1.0 and memory["sampled"]["mean_success_goal_not_nearest"] == 1.0
    nearest = grid_test_readings.goal_is_nearest(grid.make_levels("test", 7, 8, 3))
    assert memory["sampled"]["goal_nearest"] == pytest.approx(nearest.mean())
    # start (0, 0); blocks 3, 4 and 3 steps away: goals 0 and 2 are nearest (a tie), goal 1 is not
    levels = dict(starts=np.zeros((3, 2), int), blocks=np.array([[[0, 3], [2, 2], [3, 0]]] * 3),
                  goals=np.array([0, 1, 2]))
    assert grid_test_readings.goal_is_nearest(levels).tolist() == [True, False, True]
    for argv, flag in ((["--levels", "0", str(paths["snail"])], "--levels"), ([str(tmp_path / "none.pt")], "none.pt"),
                       ([str(paths["snail"]), "--levels", "10", "--readings", "train"], "--levels 10 is more than the 9")):
        monkeypatch.setattr(sys, "argv", ["grid_test_readings.py", *argv])
        with pytest.raises(SystemExit):
            grid_test_readings.main()
        assert flag in capsys.readouterr().err


def test_colour_bias_counts_each_episodes_hits_by_palette_colour(tmp_path):
    import torch

    import grid_colour_bias
    import grid_failmem as grid

    levels = grid.make_levels("test", 4, 8, 2, 3)
    palette = [tuple(c) for c in grid.block_palette(3).astype(np.uint8)]
    colour_of = [[palette.index(tuple(c)) for c in level] for level in levels["colours"]]
    hits = np.array([[0, 1], [0, -1], [1, -1], [-1, -1]])  # episode 1: three hits, episode 2: one
    shares = grid_colour_bias.hits_by_colour(levels, hits, grid.block_palette(3).astype(np.uint8))
    expected_first = np.bincount([colour_of[0][0], colour_of[1][0], colour_of[2][1]], minlength=3) / 3
    assert np.allclose(shares[0], expected_first) and np.allclose(shares[1], np.eye(3)[colour_of[0][1]])
    # a checkpoint's own task is the one it is tested on: one block drawn from three colours
    trained_as = grid.Args(grid_size=8, num_blocks=1, block_colours=3, embed_dim=16, trial_len=12)
    path = tmp_path / "agent.pt"
    torch.save(dict(args=vars(trained_as), model=grid.Agent(trained_as, len(grid.MOVES)).state_dict()), path)
    run, summary, own_palette, hit_rate, shares = grid_colour_bias.colour_bias(str(path), num_levels=6)
    assert (run.num_blocks, run.block_colours) == (1, 3) and shares.shape == (run.eval_episodes, 3)
    assert np.array_equal(own_palette, grid.block_palette(3).astype(np.uint8))
    assert ((0 <= hit_rate) & (hit_rate <= 1)).all() and 0 <= summary["mean_success"] <= 1


def test_throughput_floor_is_the_steps_of_an_update_over_its_passes_of_the_cnn():
    from grid_throughput import floor

    cnn = "the same, each distinct frame once (Agent.encode)"
    lean = dict(parts={cnn: 16.0, "the whole agent (get_action_and_value)": 40.0})
    line = floor(lean, num_envs=48, trials=4)[0]  # 8 epochs x 12 minibatches, 3,840 steps an update
    assert "96 passes" in line
    assert "could not pass 2,500 SPS" in line  # 3,840 / (96 x 0.016 s)
    assert "and a free rollout, 1,000" in line  # 3,840 / (96 x 0.040 s)
    assert "13.3 ms a pass" in line and "less than the CNN alone" in line
    cheap = dict(parts={cnn: 5.0, "the whole agent (get_action_and_value)": 12.0})
    assert "8.3 ms for everything but the CNN" in floor(cheap, num_envs=48, trials=4)[0]


def test_throughput_minibatch_banks_hold_their_own_trials_frames_and_checkout_reads_a_revision():
    import subprocess

    import grid_failmem as grid
    import torch
    from grid_throughput import ROOT, checkout, random_walk_trials

    levels = grid.make_levels("train", 4, 8, 2)
    frames, bank = random_walk_trials(levels, 3, 8, 16)
    assert frames.shape == (3, 80, 16, 16, 3) and bank.frames.shape == (3, 8, 6, 16, 16, 3)
    assert bank.valid.all() and bank.visible.shape == (3, 80, 8)
    for slot, end in enumerate(range(6, 78, 9)):
        assert torch.equal(bank.frames[:, slot], frames[:, end - 6 : end])
    assert len(torch.unique(frames.flatten(0, 1).flatten(1), dim=0)) < 3 * 80  # a random walk comes back to its cells
    directory = checkout("HEAD")
    committed = subprocess.run(["git", "show", "HEAD:common.py"], cwd=ROOT, capture_output=True, text=True).stdout
    assert (directory / "common.py").read_text() == committed and (directory / "grid_failmem.py").exists()


def test_cpu_ms_counts_the_processor_time_of_a_call_not_the_time_asleep():
    import time

    from timing import cpu_ms

    assert cpu_ms(lambda: time.sleep(0.01), seconds=0.05) < 5.0  # a sleeping call costs almost no CPU


def test_device_sps_reads_the_last_update_of_each_log_and_writes_the_ratio(tmp_path, monkeypatch):
    import grid_device_sps

    line = "update {}/390 | step {} | SPS {} (rollout {} s, update {} s) | trial return 1.00 | episode success 0.5"
    (tmp_path / "cpu_lean16.log").write_text("\n".join([
        "grid__sps_cpu_lean16__memory__1__0: 407,285 parameters, 390 updates",
        line.format(1, 3840, 600, 0.8, 5.2), line.format(2, 7680, 640, 0.6, 4.9)]))
    (tmp_path / "gpu_lean16.log").write_text(line.format(3, 11520, 1280, 0.7, 4.0))
    (tmp_path / "cpu_paper16.log").write_text("Traceback (most recent call last): no update line")
    assert grid_device_sps.logged_update(tmp_path / "cpu_lean16.log") == (640, 0.6, 4.9)
    assert grid_device_sps.logged_update(tmp_path / "cpu_paper16.log") is None
    assert grid_device_sps.logged_update(tmp_path / "gpu_paper64.log") is None  # never written
    out = tmp_path / "doc.md"
    monkeypatch.setattr(sys, "argv", ["grid_device_sps.py", "--from-logs", "--logs", str(tmp_path), "--out", str(out)])
    grid_device_sps.main()
    rows = [row for row in out.read_text().splitlines() if row.startswith("| default network")]
    assert rows[0] == ("| default network, default task (8 x 8, 2 blocks, 16 px) | 3,840 | 640 (0.6 + 4.9 s) "
                       "| 1,280 (0.7 + 4.0 s) | 2.0x |")
    assert "| paper's network, default task (8 x 8, 2 blocks, 16 px) | 3,840 | - | - | - |" in out.read_text()
    assert "| default network, default task, 480 envs (12 minibatches of 40 trials) | 38,400 | - | - | - |" in rows
    assert "machine not recorded" in out.read_text()


def test_device_sps_without_a_gpu_stops_before_any_run(tmp_path, monkeypatch):
    import torch

    import grid_device_sps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["grid_device_sps.py", "--logs", str(tmp_path / "logs")])
    with pytest.raises(SystemExit, match="no CUDA device"):
        grid_device_sps.main()
    assert not (tmp_path / "logs").exists()


def test_curriculum_starts_each_stage_from_the_same_agent_and_seed_of_the_stage_before(tmp_path, monkeypatch):
    import torch

    import grid_curriculum
    import learning

    def fake_run(tag, stage, agent, seed, iteration):  # a checkpoint as a run leaves it, banks and all left out
        run = tmp_path / "runs" / f"grid__{tag}_{stage}__{agent}__{seed}__{1000 + iteration}"
        run.mkdir(parents=True)
        torch.save(dict(iteration=iteration, args=dict(num_iterations=390)), run / "agent.pt")
        return f"{run}/agent.pt"

    launched, plotted = [], []

    def launch(runs, parallel):  # each run of a stage ends, as learning.launch waits for them
        launched.append([command for command, _ in runs])
        for command, _ in runs:
            exp, agent, seed = (command[command.index(flag) + 1] for flag in ("--exp-name", "--agent", "--seed"))
            fake_run("t", exp[2:], agent, seed, 390)

    monkeypatch.setattr(grid_curriculum, "ROOT", tmp_path)
    monkeypatch.setattr(learning, "ROOT", tmp_path)  # where the runs are looked for
    monkeypatch.setattr(grid_curriculum, "launch", launch)
    monkeypatch.setattr(grid_curriculum.subprocess, "run", lambda command, check: plotted.append(command))
    grid_curriculum.main(["--agents", "memory", "snail", "--seeds", "1", "2", "--tag", "t"])
    assert [len(stage) for stage in launched] == [4, 4, 4]
    first, second = launched[0][0], launched[1][3]
    assert "--init-from" not in first and "--num-blocks" not in first  # the default task, from scratch
    assert second[second.index("--agent") + 1:][:3] == ["snail", "--seed", "2"]
    assert second[second.index("--init-from") + 1].startswith(str(tmp_path / "runs" / "grid__t_x2__snail__2__"))
    assert second[second.index("--num-blocks") + 1] == "3" and second[second.index("--target-kl") + 1] == "0.01"
    assert second[second.index("--num-envs") + 1] == "480" and "--num-envs" not in first
    assert [command[command.index("--tag") + 1] for command in plotted] == ["t_x2", "t_x3a", "t_x3b"]

    # --first-stage starts from finished runs only: one stopped halfway is refused before anything runs
    launched.clear()
    fake_run("u", "x3a", "memory", 1, 390)
    fake_run("u", "x3a", "memory", 2, 100)
    with pytest.raises(SystemExit):
        grid_curriculum.main(["--agents", "memory", "--seeds", "1", "2", "--tag", "u", "--first-stage", "x3b"])
    assert launched == []
    args = grid_curriculum.argparse.Namespace(agents=["memory"], seeds=[1, 2], tag="u")
    assert grid_curriculum.unfinished_before(args, "x3b", grid_curriculum.starting_points(args, "x3b")) == [
        "u_x3a", "memory seed 2"]


@pytest.mark.parametrize("agent", ["memory", "snail", "ppo-finetune"])
def test_memorisation_runs_the_first_episode_of_any_agent_from_an_empty_bank(agent):
    import torch

    import grid_failmem as grid
    import grid_memorisation

    args = grid.Args(agent=agent, grid_size=8, num_blocks=2, embed_dim=16, trial_len=12)
    torch.manual_seed(0)
    hit_rate, goal_rate, hits = grid_memorisation.goal_given_hit(grid.Agent(args, len(grid.MOVES)).eval(), args, "test", 6)
    assert hits == round(hit_rate * grid_memorisation.REPEATS * 6) and hits <= grid_memorisation.REPEATS * 6
    assert 0 <= goal_rate <= 1


def test_two_failures_tells_a_reader_of_both_failures_from_one_that_reads_its_favourite_only():
    import grid_two_failures as probe

    favourite, nxt = np.array([0, 1, 2, -1]), np.array([1, 2, -1, -1])  # level 3 hit no block; level 2 had no N
    third = np.array([2, 0, -1, -1])
    both = {"empty": favourite, "F": np.array([1, 2, 0, -1]), "N": np.array([0, 1, 0, -1]),
            "F, N": third, "N, F": third}
    cells = probe.shares(favourite, nxt, both)
    assert cells["levels"] == 4 and cells["levels with N"] == 2 and cells["empty: a block"] == 0.75
    assert cells["F: another"] == 1.0 and cells["N: F"] == 1.0
    assert cells["F, N: the third"] == 1.0 and cells["N, F: the third"] == 1.0 and cells["same block either order"] == 1.0
    only_favourite = dict(both, **{"F, N": nxt, "N, F": nxt})  # avoids F whatever else the bank names
    cells = probe.shares(favourite, nxt, only_favourite)
    assert cells["F, N: the third"] == 0.0 and cells["F, N: N"] == 1.0 and cells["N, F: N"] == 1.0
    # the reader's weight on F's entry per level and head (4 heads; NaN on the levels without N)
    split = np.array([[0.95, 0.02, 0.5, 0.5], [0.99, 0.5, 0.5, 0.08], [np.nan] * 4, [np.nan] * 4])
    mixed = np.array([[0.6, 0.5, 0.5, 0.4], [0.95, 0.5, 0.5, 0.5], [np.nan] * 4, [np.nan] * 4])
    without_null = lambda on_f: {"F": on_f, "N": 1 - on_f}  # noqa: E731  the paper's read: F's and N's entries only
    cells = probe.shares(favourite, nxt, both, {"F, N": without_null(split), "N, F": without_null(mixed)})
    assert cells["F, N: a head on each"] == 1.0 and cells["N, F: a head on each"] == 0.0
    assert cells["F, N: heads over 0.9 on one"] == 0.5 and cells["N, F: heads over 0.9 on one"] == 0.125
    assert np.isclose(cells["N, F: weight on F"], 4.45 / 8) and np.isnan(cells["N, F: weight on null"])
    # with "both" every paired level walks to the third block: all of F, N's split levels, none unsplit there
    assert cells["F, N: the third, a head on each"] == 1.0 and np.isnan(cells["F, N: the third, not"])
    assert np.isnan(cells["N, F: the third, a head on each"]) and cells["N, F: the third, not"] == 1.0
    # with a null slot, a head off F's entry may be on the null slot, not on N's: not a head on each
    on_null = {"F": split, "N": np.where(split < 0.1, 0.0, 1 - split), "null": np.where(split < 0.1, 1 - split, 0.0)}
    cells = probe.shares(favourite, nxt, both, {"F, N": on_null, "N, F": without_null(mixed)})
    assert cells["F, N: a head on each"] == 0.0 and cells["F, N: heads over 0.9 on one"] == 0.25
    assert np.isclose(cells["F, N: weight on null"], (0.98 + 0.92) / 8)


def test_two_failures_refuses_an_agent_that_is_not_a_three_block_memory_agent(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_two_failures as probe

    args = grid.Args(grid_size=8, num_blocks=2, embed_dim=16, trial_len=12)
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=grid.Agent(args, len(grid.MOVES)).state_dict()), tmp_path / "agent.pt")
    with pytest.raises(SystemExit, match="not a three-block agent"):
        probe.probe(str(tmp_path / "agent.pt"), 4)


def test_two_failures_probes_a_three_block_memory_agent_end_to_end(tmp_path, monkeypatch):
    import torch

    import grid_failmem as grid
    import grid_two_failures as probe

    args = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12)
    torch.manual_seed(0)
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=grid.Agent(args, len(grid.MOVES)).state_dict()), tmp_path / "agent.pt")
    # fresh weights seldom walk to another block when the bank names their favourite, which would leave no level with
    # two failures to read: the bank naming F (the probe's second episode) is made to send them on to the next block
    real, results = probe.hits_with_banks, []

    def next_block_after_f(*inputs):
        hits = real(*inputs)
        if len(results) == 1:  # the bank naming F: the block after the favourite, where it walked to one
            hits = np.where(results[0] >= 0, (results[0] + 1) % 3, -1)
        results.append(hits)
        return hits

    monkeypatch.setattr(probe, "hits_with_banks", next_block_after_f)
    favourite, nxt, hits, attention = probe.probe(str(tmp_path / "agent.pt"), 12)
    assert set(hits) == set(probe.BANKS) and all(len(h) == len(favourite) for h in hits.values())
    assert ((nxt == -1) | (nxt != favourite)).all() and (hits["empty"] == favourite).all()
    assert (nxt >= 0).any()  # else the attention below is all NaN and says nothing
    assert set(attention) == {"F, N", "N, F"}
    for weights in attention.values():  # the default read has the null slot: F's, N's and its entries share the weight
        assert set(weights) == {"F", "N", "null"}
        for entry in weights.values():
            assert entry.shape == (len(favourite), args.num_heads) and np.isnan(entry[nxt < 0]).all()
        total = weights["F"] + weights["N"] + weights["null"]
        assert np.allclose(total[nxt >= 0], 1.0, atol=1e-5) and (weights["F"][nxt >= 0] > 0).all()
    # the read has no slot positions: naming F and N in the other order moves F's weight with F's entry
    for entry in ("F", "N", "null"):
        assert np.allclose(attention["F, N"][entry][nxt >= 0], attention["N, F"][entry][nxt >= 0], atol=1e-5)
    assert not np.allclose(attention["F, N"]["F"][nxt >= 0], attention["F, N"]["N"][nxt >= 0], atol=1e-5)
    cells = probe.shares(favourite, nxt, hits, attention)
    assert "F, N: weight on F" in cells and "N, F: heads over 0.9 on one" in cells and "F, N: a head on each" in cells
    assert 0 < cells["F, N: weight on null"] < 1


def test_two_failures_records_the_readers_attention_without_changing_the_read():
    import torch

    import grid_failmem as grid
    import grid_two_failures as probe

    # the paper's read, as the probe's clones have it: no null slot, and an empty bank gives m_o = 0
    args = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12, null_slot=False)
    torch.manual_seed(0)
    agent = grid.Agent(args, len(grid.MOVES)).eval()
    reader = agent.memory_read[0]
    query, memory = torch.randn(3, 1, 16), torch.randn(3, 8, 16)
    valid = torch.zeros(3, 8, dtype=torch.bool)
    valid[:, :2] = True
    valid[2] = False  # an empty bank: m_o = 0
    before = reader(query, memory, valid)
    with probe.attention_recorded(agent) as calls:
        during = reader(query, memory, valid)
    assert torch.equal(before, during) and torch.equal(reader(query, memory, valid), before)
    (weights,) = calls
    assert weights.shape == (3, args.num_heads, 1, 8)
    assert torch.allclose(weights[:2].sum(-1), torch.ones(2, args.num_heads, 1))
    assert (weights[:2, ..., 2:] == 0).all()  # padded slots get no weight
    assert "forward" not in vars(reader.attention)  # the module's own forward is back


def test_two_failures_supervised_cases_target_a_block_no_failure_names():
    import grid_failmem as grid
    import grid_two_failures as probe

    args = grid.Args(num_blocks=3)
    levels, kept, named, targets, view, walks, (frames, moves, valid) = probe.walk_cases(args, "train", 40, np.random.default_rng(0))
    assert len(kept) == len(named) == len(targets) == len(frames) > 0
    assert {len(blocks) for blocks in named} == {1, 2}
    for row, (level, blocks, target) in enumerate(zip(kept, named, targets)):
        assert target not in blocks and (len(blocks) == 1 or target == 3 - sum(blocks))
        # the bank holds the walks into the named blocks, oldest first; the trial's steps are the walk into the target
        for slot, block in enumerate(blocks):
            stored = walks[level, block][1][-args.mem_len:]
            assert (view.actions[row, slot, -len(stored):].numpy() == stored).all()
        assert not view.valid[row, len(blocks):].any()
        length = len(walks[level, target][1])
        assert (moves[row, :length].numpy() == walks[level, target][1]).all() and valid[row].sum() == length
        start = grid.BatchedGridWorld(levels, 1, args.grid_size, args.obs_size).set_levels([level])[0]
        assert (frames[row, 0].numpy() == start).all()


def test_two_failures_supervised_trains_the_reader_alone_when_asked_and_scores_shares(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_two_failures as probe

    args = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12)
    torch.manual_seed(0)
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=grid.Agent(args, len(grid.MOVES)).state_dict()), tmp_path / "agent.pt")
    before = grid.Agent(args, len(grid.MOVES))
    before.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True)["model"])
    result, after, _ = probe.supervised(3, str(tmp_path / "agent.pt"), "reader", batch=4, train_levels=20, test_levels=12)
    as_saved, untouched, _ = probe.supervised(3, str(tmp_path / "agent.pt"), "none", batch=4, train_levels=20, test_levels=12)
    assert all(torch.equal(p, before.state_dict()[name]) for name, p in untouched.state_dict().items())
    assert [count for _, count in as_saved.values()] == [count for _, count in result.values()]  # the same test levels
    changed = {name for name, p in after.state_dict().items() if not torch.equal(p, before.state_dict()[name])}
    assert changed and all(name.startswith("memory_read.") for name in changed)
    assert set(result) == {1, 2} and all(0 <= share <= 1 for share, _ in result.values())
    assert sum(count for _, count in result.values()) > 0
    with pytest.raises(SystemExit, match="not a three-block agent"):
        torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(grid.Args(agent="snail", num_blocks=3)),
                        model=grid.Agent(grid.Args(agent="snail", num_blocks=3), len(grid.MOVES)).state_dict()), tmp_path / "snail.pt")
        probe.supervised(1, str(tmp_path / "snail.pt"), "reader", batch=4, train_levels=20, test_levels=12)


def test_two_failures_supervised_doc_lists_every_run_and_saves_checkpoints_that_load(tmp_path, monkeypatch, capsys):
    import torch

    import grid_failmem as grid
    import grid_two_failures as probe

    args = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12)
    calls = []

    def fake_supervised(steps, checkpoint, trained, seed):
        calls.append((checkpoint, trained, seed))
        return {1: (0.5, 10), 2: (0.25, 8)}, grid.Agent(args, len(grid.MOVES)), args

    monkeypatch.setattr(probe, "supervised", fake_supervised)
    probe.main(["ckpt/agent.pt", "--supervised-steps", "7", "--seeds", "1", "2", "--save-dir", str(tmp_path / "bc"),
                "--out", str(tmp_path / "doc.md")])
    assert sorted(calls, key=str) == sorted([(path, trained, seed) for seed in (1, 2) for path, trained in (
        (None, "all"), ("ckpt/agent.pt", "none"), ("ckpt/agent.pt", "all"), ("ckpt/agent.pt", "reader"))], key=str)
    doc = (tmp_path / "doc.md").read_text()
    assert doc.count("| 0.500 | 0.250 | 10 / 8 |") == 8 and "--supervised-steps 7 --seeds 1 2" in doc
    saved = sorted(path.name for path in (tmp_path / "bc").iterdir())
    assert saved == sorted(f"{name}_{trained}_{seed}.pt" for name, trained in (("fresh", "all"), ("ckpt", "all"),
                                                                               ("ckpt", "reader")) for seed in (1, 2))
    loaded = grid.load_checkpoint(str(tmp_path / "bc" / "fresh_all_1.pt"), grid.Args(), len(grid.MOVES), torch.device("cpu"))
    assert loaded.use_memory
    with pytest.raises(SystemExit):
        probe.main(["--supervised-steps", "-1"])
    assert "--supervised-steps must be 0 or more" in capsys.readouterr().err


def tiny_three_block_agent(tmp_path, agent="memory"):
    import torch

    import grid_failmem as grid

    args = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12, agent=agent)
    torch.manual_seed(0)
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=grid.Agent(args, len(grid.MOVES)).state_dict()), tmp_path / f"{agent}.pt")
    return args, str(tmp_path / f"{agent}.pt")


def test_read_decode_cases_target_the_named_block_or_the_one_no_failure_names():
    import grid_failmem as grid
    import grid_read_decode as decode

    args = grid.Args(num_blocks=3)
    for named_count in (1, 2):
        levels, ids, named, targets, walks = decode.cases(decode.walkable(args, "test", 30), named_count,
                                                          np.random.default_rng(0))
        assert len(ids) == len(named) == len(targets) > 0
        for level, blocks, target in zip(ids, named, targets):
            assert len(set(blocks)) == len(blocks) == named_count and all((level, b) in walks for b in range(3))
            assert target == (blocks[0] if named_count == 1 else ({0, 1, 2} - set(blocks)).pop())
    features = decode.block_features(args, levels, ids)
    assert features.shape == (len(ids), 3, 3 + 4)
    assert (features[..., :3].sum(-1) == 1).all()  # one colour each, and the three differ
    assert (features[..., :3].sum(1) == 1).all()
    offsets = (levels["blocks"][ids] - levels["starts"][ids][:, None]) / args.grid_size
    assert np.allclose(features[..., 5:].numpy(), offsets)


def test_read_decode_states_see_the_bank_except_the_observation_embedding(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_read_decode as decode

    args, path = tiny_three_block_agent(tmp_path)
    agent = grid.load_checkpoint(path, grid.Args(), len(grid.MOVES), torch.device("cpu")).eval()
    levels, ids, named, _, walks = decode.cases(decode.walkable(args, "test", 12), 2, np.random.default_rng(0))
    two = decode.first_step_states(agent, args, levels, ids, named, walks)
    one = decode.first_step_states(agent, args, levels, ids, [blocks[:1] for blocks in named], walks)
    assert {name: state.shape for name, state in two.items()} == {
        "v'_o": (len(ids), 16), "v_tau": (len(ids), 32), "m_d": (len(ids), 16), "m_o": (len(ids), 16), "trunk": (len(ids), 256)}
    assert one["v_tau"].shape == (len(ids), 16)
    assert torch.equal(one["v'_o"], two["v'_o"])
    # a trajectory's embedding does not depend on the rest of the bank: the older slot is the one-failure bank's
    assert torch.allclose(two["v_tau"][:, :16], one["v_tau"], atol=1e-6)
    assert not torch.allclose(one["m_d"], two["m_d"]) and not torch.allclose(one["trunk"], two["trunk"])
    # the hooks are gone and the agent's step is what it was
    assert not any(module._forward_hooks for module in agent.modules())


def test_read_decode_decoder_finds_a_target_the_state_carries_and_not_one_it_does_not():
    import torch

    import grid_read_decode as decode

    rng = torch.Generator().manual_seed(0)
    blocks = torch.rand(600, 3, 7, generator=rng)
    targets = torch.randint(3, (600,), generator=rng)
    carried = torch.cat([blocks[torch.arange(600), targets], torch.randn(600, 5, generator=rng)], -1)
    split = lambda states: ((states[:400], blocks[:400], targets[:400]), (states[400:], blocks[400:], targets[400:]))
    held_out, fitted = decode.decode(*split(carried), steps=400)
    assert held_out > 0.9 and fitted > 0.9
    blind, _ = decode.decode(*split(torch.randn(600, 12, generator=rng)), steps=400)
    assert blind < 0.5


def test_read_decode_writes_a_row_per_bank_and_refuses_other_agents(tmp_path, capsys):
    import grid_read_decode as decode

    _, path = tiny_three_block_agent(tmp_path)
    decode.main([path, "--train-levels", "12", "--test-levels", "8", "--out", str(tmp_path / "doc.md")])
    doc = (tmp_path / "doc.md").read_text()
    assert "--train-levels 12 --test-levels 8" in doc
    for bank in ("one failure: the named block", "two failures: the third block"):
        assert doc.count(f"| `{tmp_path.name}` | {bank} |") == 1
    _, snail = tiny_three_block_agent(tmp_path, agent="snail")
    with pytest.raises(SystemExit, match="not a three-block agent of --agent memory"):
        decode.measure(snail, 4, 4)
    with pytest.raises(SystemExit):
        decode.main([path, "--train-levels", "0"])
    assert "--train-levels must be positive" in capsys.readouterr().err


def test_warm_start_trials_walk_the_blocks_in_some_order_up_to_the_goal_then_the_goal():
    import grid_failmem as grid
    import grid_warm_start as warm

    args = grid.Args(num_blocks=3)
    levels = grid.task_levels(args, "train", 30)
    kept, frames, moves, prev_moves, prev_rewards, starts, valid = warm.scripted_trials(
        args, "train", 30, np.random.default_rng(0), episodes=4)
    assert len(kept) > 0 and frames.shape[:2] == moves.shape == valid.shape
    for row, level in enumerate(kept):
        n = int(valid[row].sum())
        assert valid[row, :n].all() and starts[row, 0] == 1 and starts[row].sum() == 4
        # replay the moves: every episode ends on a block, no block is hit twice before the goal, then only the goal
        env = grid.GridWorld(levels, args.grid_size, args.obs_size, args.trial_len)
        frame, _ = env.reset(options={"level": int(level)})
        hits, rewards = [], []
        for t in range(n):
            assert (frames[row, t].numpy() == frame).all() and bool(starts[row, t]) == (t == 0 or rewards[-1] != 0)
            frame, reward, terminated, _, info = env.step(int(moves[row, t]))
            rewards.append(reward)
            if terminated:
                hits.append(info["hit"])
                frame, _ = env.reset(options={"level": int(level)})
        goal = levels["goals"][level]
        assert len(hits) == 4 and goal in hits and len(set(hits[: hits.index(goal) + 1])) == hits.index(goal) + 1
        assert all(hit == goal for hit in hits[hits.index(goal):])
        assert (prev_moves[row, 1:n].numpy() == moves[row, : n - 1].numpy()).all() and prev_moves[row, 0] == 0
        assert np.allclose(prev_rewards[row, 1:n].numpy(), rewards[:-1]) and prev_rewards[row, 0] == 0


def test_warm_start_writes_checkpoints_that_evaluate_and_refuses_bad_steps(tmp_path, monkeypatch, capsys):
    import torch

    import grid_failmem as grid
    import grid_warm_start as warm

    real_clone = warm.clone_snail
    monkeypatch.setattr(warm, "clone_snail", lambda steps, seed, grid_size: real_clone(
        steps, seed, batch=2, train_levels=8, grid_size=grid_size))
    warm.main(["--agent", "snail", "--steps", "2", "--grid-size", "16", "--out", str(tmp_path / "snail.pt")])
    loaded_args = grid.Args()
    agent = grid.load_checkpoint(str(tmp_path / "snail.pt"), loaded_args, len(grid.MOVES), torch.device("cpu"))
    assert agent.name == "snail" and not agent.use_memory and (loaded_args.grid_size, loaded_args.num_blocks) == (16, 3)
    for flags, message in ((["--steps", "0"], "--steps must be positive"), (["--grid-size", "5"], "--grid-size must divide")):
        with pytest.raises(SystemExit):
            warm.main(["--agent", "memory", *flags, "--out", str(tmp_path / "memory.pt")])
        assert message in capsys.readouterr().err


def test_fresh_reader_replaces_the_reader_only_and_the_copy_starts_a_run(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_fresh_reader

    args = grid.Args(grid_size=8, num_blocks=2, embed_dim=16, trial_len=12)
    torch.manual_seed(0)
    weights = grid.Agent(args, len(grid.MOVES)).state_dict()
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args), model=weights),
               tmp_path / "agent.pt")
    grid_fresh_reader.main([str(tmp_path / "agent.pt"), str(tmp_path / "fresh.pt"), "--seed", "3"])
    fresh = torch.load(tmp_path / "fresh.pt", weights_only=True)["model"]
    assert fresh.keys() == weights.keys()
    changed = {name for name in weights if not torch.equal(weights[name], fresh[name])}
    assert changed and all(name.startswith("memory_read.") for name in changed)
    assert all(torch.equal(weights[name], fresh[name]) for name in weights if not name.startswith("memory_read."))
    again, _ = grid_fresh_reader.fresh_reader(torch.load(tmp_path / "agent.pt", weights_only=True), 3)
    assert all(torch.equal(again[name], fresh[name]) for name in fresh)  # the seed fixes the fresh reader
    # the copy is what --init-from reads: it fits an agent of the same flags on three blocks
    three = grid.Args(grid_size=8, num_blocks=3, embed_dim=16, trial_len=12, init_from=str(tmp_path / "fresh.pt"))
    assert grid.init_weights(three, three.init_from).keys() == weights.keys()


def test_fresh_reader_refuses_an_agent_without_a_reader(tmp_path):
    import torch

    import grid_failmem as grid
    import grid_fresh_reader

    args = grid.Args(agent="snail", grid_size=8, num_blocks=2, embed_dim=16, trial_len=12)
    torch.save(dict(script=grid.CHECKPOINT_SCRIPT, format=grid.CHECKPOINT_FORMAT, args=vars(args),
                    model=grid.Agent(args, len(grid.MOVES)).state_dict()), tmp_path / "agent.pt")
    with pytest.raises(SystemExit, match="snail agent, which has no reader"):
        grid_fresh_reader.main([str(tmp_path / "agent.pt"), str(tmp_path / "fresh.pt")])


def test_speedup_alternates_the_revisions_and_writes_each_rounds_ratio(tmp_path, monkeypatch):
    import grid_speedup

    calls, sps = [], iter([500, 600, 400, 600, 500, 550])

    def train(run, flags, script_dir=None):
        calls.append((script_dir is not None, list(flags), run.num_envs, run.updates))
        return next(sps), 0.5, 2.0

    monkeypatch.setattr(grid_speedup, "train", train)
    monkeypatch.setattr(grid_speedup, "checkout", lambda revision: tmp_path / revision)
    monkeypatch.setattr(grid_speedup, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    grid_speedup.main(["--before", "abc", "--name", "x", "--updates", "2", "--num-envs", "480", "--",
                       "--grid-size", "16", "--init-from", "runs/a.pt"])
    assert [c[0] for c in calls] == [True, False] * 3  # before, now, before, now, ...
    assert all(c[1] == ["--grid-size", "16", "--init-from", str(Path("runs/a.pt").resolve())] and c[2:] == (480, 2)
               for c in calls)
    doc = (tmp_path / "docs" / "grid_speedup_x.md").read_text()
    assert "| 1 | 500 | 600 | 1.20x |" in doc and "| 2 | 400 | 600 | 1.50x |" in doc and "| 3 | 500 | 550 | 1.10x |" in doc
    assert "Median ratio **1.20x** (range 1.10-1.50)" in doc


def test_speedup_gives_todays_runs_their_own_threads(tmp_path, monkeypatch):
    import grid_speedup

    threads = []

    def train(run, flags, script_dir=None):
        threads.append(run.threads)
        return 500, 0.5, 2.0

    monkeypatch.setattr(grid_speedup, "train", train)
    monkeypatch.setattr(grid_speedup, "checkout", lambda revision: tmp_path / revision)
    monkeypatch.setattr(grid_speedup, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    grid_speedup.main(["--before", "HEAD", "--name", "x", "--rounds", "2", "--threads", "1", "--threads-now", "2"])
    assert threads == [1, 2, 1, 2]
    doc = (tmp_path / "docs" / "grid_speedup_x.md").read_text()
    assert "--threads 1 --threads-now 2`" in doc and "today's 2" in doc


@pytest.mark.parametrize("argv, message", [
    (["--before", "HEAD", "--name", "x", "--rounds", "0"], "--rounds must be positive"),
    (["--before", "HEAD", "--name", "x", "--threads-now", "0"], "--threads-now must be positive"),
    (["--before", "no-such-revision", "--name", "x"], "--before: git has no grid_failmem.py"),
])
def test_speedup_refuses_bad_flags_before_any_run(argv, message, monkeypatch, capsys):
    import grid_speedup

    monkeypatch.setattr(grid_speedup, "train", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit):
        grid_speedup.main(argv)
    assert message in capsys.readouterr().err


def test_speedup_times_a_minibatch_of_the_flags_task_with_the_scripts_of_a_directory(tmp_path):
    from grid_speedup import ROOT, pass_ms

    assert pass_ms(ROOT, 2, 1, ["--grid-size", "16", "--num-blocks", "3", "--seed", "4"], seconds=0.1) > 0
    (tmp_path / "grid_failmem.py").write_text("raise SystemExit('the copy in the directory ran')")
    with pytest.raises(Exception) as error:
        pass_ms(tmp_path, 2, 1, [], seconds=0.1)
    assert "the copy in the directory ran" in error.value.stderr


def test_reference_testers_walk_around_other_blocks_and_keep_their_rules():
    import grid_reference_testers as testers

    # from (0, 0) to (0, 2) with a block at (0, 1): the first move goes down, around it
    assert testers.first_move((0, 0), (0, 2), {(0, 1)}, 8) == 3
    assert testers.first_move((0, 0), (0, 2), set(), 8) == 1
    with pytest.raises(ValueError, match="no path"):
        testers.first_move((0, 0), (7, 7), {(0, 1), (1, 0)}, 8)
    with pytest.raises(ValueError, match="rule must be one of"):
        testers.ReferenceTester("guess", None, [0], 8, 16)

    import grid_failmem as grid

    levels = grid.make_levels("test", 60, 8, 3)
    args = grid.Args(grid_size=8, num_blocks=3, test_history="trial")
    results = {}
    for rule in testers.TESTERS:
        tester = testers.ReferenceTester(rule, levels, np.arange(60), 8, args.obs_size)
        results[rule] = grid.evaluate(tester, args, levels, np.arange(60), "cpu")
        hits, success = results[rule]["hits"], results[rule]["success"]
        assert (hits >= 0).all()  # it always walks into some block
        # a found goal is walked to again
        assert all(success[level, k + 1] for level, k in zip(*np.nonzero(success[:, :-1])))
    # avoid-all never hits a trap twice: Bayes-optimal
    assert results["avoid-all"]["success"][:, 2:].all()
    assert grid.summarize(results["avoid-all"], 3)["goal_after_two_failures"] == 1.0
    # avoid-last never goes back to the trap that failed just before
    hits, success = results["avoid-last"]["hits"], results["avoid-last"]["success"]
    assert all(hits[level, k + 1] != hits[level, k] for level, k in zip(*np.nonzero(~success[:, :-1])))
    # retry does, on some level: it remembers only that the last episode failed
    hits, success = results["retry"]["hits"], results["retry"]["success"]
    assert any(hits[level, k + 1] == hits[level, k] for level, k in zip(*np.nonzero(~success[:, :-1])))
    assert np.allclose(testers.retry_line(3, 3), [1 / 3, 5 / 9, 19 / 27])


def test_bank_history_counts_visit_two_by_the_traps_hit_before():
    from grid_bank_history import outcome_counts

    hit = np.array([2, 0, 1, -1, 1])
    success = np.array([True, False, False, False, False])
    known = [{0}, {0}, {0}, {0, 1}, {0, 1}]
    # goal; the trap hit before; a trap not hit before; no block; a trap hit before
    assert outcome_counts(hit, success, known).tolist() == [1, 2, 1, 1]


def test_bank_history_takes_out_the_timed_out_episodes_only_and_leaves_the_bank_as_it_was():
    import grid_failmem as grid
    from grid_bank_history import bank_kinds, without_timeouts

    bank = grid.MemoryBank(mem_size=8, mem_len=4, obs_shape=(2, 2, 3), ram_bytes=float("inf"))
    frames = np.zeros((3, 2, 2, 3), np.uint8)
    bank.add(0, frames, np.zeros(3, np.int64), np.array([0, 0, -1], np.float32))  # a trap
    bank.add(0, frames, np.zeros(3, np.int64), np.array([0, 0, 0], np.float32))  # ran its step limit
    bank.add(1, frames[:2], np.zeros(2, np.int64), np.array([0, -1], np.float32))
    [cleaned] = without_timeouts([bank])
    assert [t[2][-1] for t in cleaned.banks[0]] == [-1] and len(cleaned.banks[1]) == 1 and cleaned.num_trajectories == 2
    assert len(bank.banks[0]) == 2 and bank.num_trajectories == 3
    result = dict(hits=np.array([[0, 2, -1], [1, 1, 0]]), success=np.array([[False, True, False], [False, False, True]]))
    known, has_timeout = bank_kinds([bank], result, [0, 1])
    assert known == [{0}, {1}] and has_timeout.tolist() == [True, False]
