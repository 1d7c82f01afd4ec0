"""The benchmark harness (fastnets.benchmark) and `python -m fastnets bench`: timing of functions
with a known cost, input rotation, the CUDA-event path (GPU only), result rows and tables, the
regression comparison on an injected regression and on an unchanged run, and the quick suite
end to end (what CI runs)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastnets import benchmark
from fastnets.__main__ import main
from harness import cuda_only

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock that only the synthetic functions advance: their cost is known exactly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, seconds: float):
        def call():
            self.now += seconds
        return call


def busy(seconds: float):
    """A function that costs `seconds` of wall time (a spin, not a sleep)."""
    def spin():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return spin


def test_measure_reports_the_cost_of_one_call():
    ms = 2.0**-10  # about a millisecond, exact in binary
    clock = FakeClock()
    timing = benchmark.measure([clock.costing(ms)], "cpu", rounds=7, min_round_s=3 * ms, timer=clock)
    assert (timing.calls_per_round, timing.rounds) == (3, 7)
    assert (timing.median_s, timing.iqr_s) == (ms, 0.0)
    # Short calls are repeated within a round, and the round's time divided by their number.
    timing = benchmark.measure([clock.costing(ms / 64)], "cpu", rounds=5, min_round_s=2 * ms, timer=clock)
    assert (timing.calls_per_round, timing.median_s) == (128, ms / 64)
    # Input sets of different costs: rounds rotate over all of them.
    timing = benchmark.measure([clock.costing(ms), clock.costing(3 * ms)], "cpu", rounds=4, min_round_s=4 * ms,
                               timer=clock)
    assert (timing.calls_per_round, timing.median_s) == (2, 2 * ms)


def test_measure_with_the_real_clock():
    timing = benchmark.measure([busy(1e-3)], "cpu", rounds=5)
    assert 1e-3 <= timing.median_s < 2e-2  # never less than the spin; more only when the machine is busy


def test_rounds_are_sized_after_the_warm_up():
    clock = FakeClock()
    cold = [True]

    def compiles_on_first_call():
        clock.now += 2.0 if cold[0] else 2.0**-10
        cold[0] = False

    timing = benchmark.measure([compiles_on_first_call], "cpu", rounds=3, min_round_s=2.0**-7, timer=clock)
    assert (timing.calls_per_round, timing.median_s) == (8, 2.0**-10)


def test_measure_rotates_over_the_input_sets():
    counts = [0, 0, 0]

    def counter(i):
        def call():
            counts[i] += 1
        return call

    benchmark.measure([counter(i) for i in range(3)], "cpu", rounds=4, warmup=2, min_round_s=0)
    assert counts == [5, 4, 4]  # two warm-up passes and a sizing pass over all three, then four rounds of one call


def test_implementations_take_turns_round_by_round():
    log = []

    def named(name):
        return lambda: log.append(name)

    timings = benchmark.measure_together({name: [named(name)] for name in "abc"}, "cpu", rounds=4, warmup=0,
                                         min_round_s=0)
    assert "".join(log) == "abc" + "abc" + "bca" + "cab" + "abc"  # the sizing passes, then the rounds
    assert set(timings) == set("abc") and all(len(t.samples_s) == 4 for t in timings.values())


def test_speed_up_pairs_the_rounds_when_the_machine_slows_down():
    """The machine gets three times slower after the second round. Timed one after the other,
    the candidate would have run fast and the reference slow (4.5x); in turns, each round's
    ratio is the true 1.5x."""
    clock = FakeClock()
    calls = [0]

    def costing(seconds):
        def call():
            clock.now += seconds * (3 if calls[0] >= 6 else 1)  # calls 0-1 size the rounds, then two a round
            calls[0] += 1
        return call

    case = benchmark.Case(op="drift", shape="1", direction="forward", device="cpu", dtype="float32",
                          make_inputs=lambda: (), impls={"fastnets": lambda _: costing(2.0**-8),
                                                         "reference": lambda _: costing(1.5 * 2.0**-8)})
    ours, theirs = benchmark.run_cases([case], rounds=5, warmup=0, progress=False, timer=clock)
    assert ours["calls_per_round"] == theirs["calls_per_round"] == 1  # calls longer than a round's 2 ms
    assert theirs["speedup"] == 1.5 and theirs["speedup_iqr"] == [1.5, 1.5]
    assert ours["median_ms"] == 3e3 * 2.0**-8  # three of five rounds slow


def test_an_implementation_failing_within_the_rounds_is_left_out():
    clock = FakeClock()
    count = [0]

    def fails_on_third_call():
        count[0] += 1
        clock.now += 2.0**-10
        if count[0] == 3:
            raise RuntimeError("flaky kernel")

    impls = {"good": [clock.costing(2.0**-10)], "flaky": [fails_on_third_call]}
    reported = []
    timings = benchmark.measure_together(impls, "cpu", rounds=4, warmup=0, min_round_s=0, timer=clock,
                                         on_error=lambda name, error: reported.append((name, str(error))))
    assert list(timings) == ["good"] and len(timings["good"].samples_s) == 4
    assert reported == [("flaky", "flaky kernel")]
    count[0] = 0
    with pytest.raises(RuntimeError, match="flaky kernel"):
        benchmark.measure_together(impls, "cpu", rounds=4, warmup=0, min_round_s=0, timer=clock)


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="calls"):
        benchmark.measure([], "cpu")
    with pytest.raises(ValueError, match="rounds"):
        benchmark.measure([busy(0)], "cpu", rounds=0)
    with pytest.raises(ValueError, match="the calls of 'b'"):
        benchmark.measure_together({"a": [busy(0)], "b": []}, "cpu")


def test_input_sets_fill_twice_the_cache():
    small = benchmark.input_sets(lambda: (torch.zeros(16),), "cpu")
    assert len(small) == benchmark.MAX_INPUT_SETS and len({id(s[0]) for s in small}) == len(small)
    half_the_cache = benchmark.cache_bytes("cpu") // 2 // 4  # float32 elements
    assert len(benchmark.input_sets(lambda: (torch.zeros(half_the_cache),), "cpu")) == 4
    assert len(benchmark.input_sets(lambda: (torch.zeros(4 * half_the_cache),), "cpu")) == 1
    assert len(benchmark.input_sets(lambda: (3,), "cpu")) == 1  # nothing to rotate


@cuda_only
@pytest.mark.cuda
def test_cuda_events_time_the_kernels_not_the_launches():
    cycles = 2_000_000
    one = benchmark.measure([lambda: torch.cuda._sleep(cycles)], "cuda", rounds=5)
    two = benchmark.measure([lambda: torch.cuda._sleep(2 * cycles)], "cuda", rounds=5)
    assert 1.7 <= two.median_s / one.median_s <= 2.3
    assert one.median_s > 1e-4  # a host timer without synchronizing would see only the launch (microseconds)


def synthetic_case(candidate_s=1e-3, reference_s=2e-3, **kwargs):
    return benchmark.Case(op="spin", shape="1", direction="forward", device="cpu", dtype="float32",
                          make_inputs=lambda: (), impls={"fastnets": lambda _: busy(candidate_s),
                                                         "reference": lambda _: busy(reference_s)}, **kwargs)


def test_run_cases_rows_and_table():
    clock = FakeClock()
    case = benchmark.Case(op="spin", shape="1", direction="forward", device="cpu", dtype="float32",
                          make_inputs=lambda: (), impls={"fastnets": lambda _: clock.costing(2.0**-10),
                                                         "reference": lambda _: clock.costing(2.0**-9)},
                          bytes_moved=10**6)
    rows = benchmark.run_cases([case], rounds=5, progress=False, timer=clock)
    ours, theirs = rows
    assert ours["candidate"] and not theirs["candidate"] and "speedup" not in ours
    assert ours["median_ms"] == 1e3 * 2.0**-10 and theirs["speedup"] == 2.0
    assert ours["gbps"] == pytest.approx(1.024) and theirs["gbps"] == pytest.approx(0.512)
    assert ours["copy_gbps"] > 0 and ours["tflops"] is None
    text = benchmark.table(rows)
    assert "| spin | 1 | forward | cpu | float32 | reference |" in text and "copy bandwidth, cpu float32" in text
    with pytest.raises(ValueError, match="candidate"):
        benchmark.run_cases([synthetic_case(candidate="nobody")], rounds=1, progress=False)


def rows_with_speedup(speedup: float, op: str = "spin"):
    common = dict(op=op, shape="1", direction="forward", device="cpu", device_name="cpu", dtype="float32")
    return [dict(common, impl="fastnets", candidate=True, median_ms=1.0),
            dict(common, impl="torch", candidate=False, median_ms=speedup, speedup=speedup)]


def test_compare_runs_flags_only_a_ratio_beyond_the_threshold():
    baseline = rows_with_speedup(2.0) + rows_with_speedup(3.0, op="other")
    changes, regressions = benchmark.compare_runs(baseline, rows_with_speedup(2.0) + rows_with_speedup(3.0, "other"))
    assert len(changes) == 2 and not regressions
    # fastnets/reference time 0.5 -> 1 / 1.8: 11.1% more, a regression at 10%; 1 / 1.83: 9.3%, not one.
    changes, regressions = benchmark.compare_runs(baseline, rows_with_speedup(1.8) + rows_with_speedup(2.75, "other"))
    assert [c.case[0] for c in regressions] == ["spin"] and regressions[0].slowdown == pytest.approx(1 / 9)
    assert not benchmark.compare_runs(baseline, rows_with_speedup(1.83))[1]
    assert not benchmark.compare_runs(baseline, rows_with_speedup(1.7), fail_above=0.2)[1]
    assert not benchmark.compare_runs(baseline, rows_with_speedup(5.0, op="new"))[0]  # unmatched: left out
    with pytest.raises(ValueError, match="fail_above"):
        benchmark.compare_runs(baseline, baseline, fail_above=-0.1)


def write_results(path: Path, rows) -> Path:
    return benchmark.save_results(rows, path, {"test": True})


def test_cli_compare_fails_on_an_injected_regression(tmp_path, capsys):
    baseline = write_results(tmp_path / "base.json", rows_with_speedup(2.0))
    same = write_results(tmp_path / "same.json", rows_with_speedup(2.0))
    slower = write_results(tmp_path / "slower.json", rows_with_speedup(1.5))
    assert main(["bench", "--load", str(same), "--compare", str(baseline), "--fail-above", "10%"]) == 0
    assert main(["bench", "--load", str(slower), "--compare", str(baseline), "--fail-above", "10%"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["bench", "--load", str(slower), "--compare", str(baseline), "--fail-above", "40%"]) == 0
    # --save replaces a baseline only after the comparison has read it.
    capsys.readouterr()
    assert main(["bench", "--load", str(slower), "--compare", str(baseline), "--save", str(baseline)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["bench", "--load", str(slower), "--compare", str(baseline)]) == 0


def test_cli_loads_several_files_as_one_run(tmp_path, capsys):
    # make gpu-check runs the suites one by one under a time limit and joins their results.
    first = write_results(tmp_path / "first.json", rows_with_speedup(2.0))
    second = write_results(tmp_path / "second.json", rows_with_speedup(3.0, op="other"))
    joined = tmp_path / "joined.json"
    assert main(["bench", "--load", str(first), "--load", str(second), "--save", str(joined)]) == 0
    table = capsys.readouterr().out
    assert "spin" in table and "other" in table
    assert [row["op"] for row in benchmark.load_results(joined)] == ["spin", "spin", "other", "other"]


def test_cli_reports_bad_files_and_arguments(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": []}))
    assert main(["bench", "--load", str(bad)]) == 2
    assert "not a fastnets benchmark results file" in capsys.readouterr().err
    assert main(["bench", "--load", str(tmp_path / "missing.json")]) == 2
    assert main(["bench", "--ops", "no_such_op", "--list"]) == 2
    assert "unknown op(s) no_such_op" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--fail-above", "-5%"])
    assert main(["bench", "--compare", str(tmp_path / "missing"), "--ops", "maxout"]) == 2  # before any timing
    assert "no benchmark results" in capsys.readouterr().err


def test_a_failing_implementation_is_reported_and_the_run_goes_on(capsys):
    def broken(_):
        def call():
            raise RuntimeError("kernel exploded")
        return call

    case = benchmark.Case(op="spin", shape="1", direction="forward", device="cpu", dtype="float32",
                          make_inputs=lambda: (), impls={"fastnets": lambda _: busy(1e-4), "broken": broken,
                                                         "fine": lambda _: busy(2e-4)})
    rows = benchmark.run_cases([case, case], rounds=2, progress=False)
    assert [row.get("error") for row in rows[:3]] == [None, "RuntimeError: kernel exploded", None]
    assert rows[2]["speedup"] > 1 and "speedup" not in rows[1]
    assert "kernel exploded" in capsys.readouterr().err  # the traceback
    text = benchmark.table(rows)
    assert "| broken | " in text and "error: spin 1 forward cpu float32 broken: RuntimeError: kernel exploded" in text


def test_select_cases_by_suite_or_op():
    suites = benchmark.load_suites(REPO / "bench")
    assert {"conv", "dropout", "fixed_point", "max_pool", "maxout"} <= set(suites)
    ops = {case.op for case in benchmark.select_cases(suites, ["cpu"], ["conv2d", "dropout"])}
    assert ops == {"conv2d", "conv2d+relu+max_pool2d", "dropout"}
    with pytest.raises(ValueError, match="unknown op"):
        benchmark.select_cases(suites, ["cpu"], ["nope"])


def test_compare_api_on_a_user_layer(capsys):
    x = torch.randn(256, 256)
    rows = benchmark.compare(torch.relu, {"clamp": lambda t: t.clamp(min=0)}, inputs=(x,), name="relu", rounds=3)
    assert [row["impl"] for row in rows] == ["candidate", "clamp"] and rows[1]["speedup"] > 0
    assert "| relu | 256x256 | forward | cpu | float32 | clamp |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="candidate"):
        benchmark.compare(torch.relu, {"candidate": torch.relu}, inputs=(x,))


def test_quick_suite_end_to_end(tmp_path):
    """What CI runs: every CPU suite with --quick, its JSON, a saved baseline, the comparison with
    it (not judged: two runs on a shared machine differ) and the plot."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OUT="")
    command = [sys.executable, "-m", "fastnets", "bench", "--quick", "--device", "cpu", "--json",
               str(tmp_path / "run.json"), "--save", "base"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    rows = benchmark.load_results(tmp_path / "run.json")
    every_suite = {case.op.split(" ")[0] for case in benchmark.select_cases(benchmark.load_suites(REPO / "bench"),
                                                                              ["cpu"])}
    assert {"conv2d", "conv2d+relu+max_pool2d", "dropout", "fixed_point_quantize", "max_pool2d", "maxout",
            "rbm"} <= every_suite
    assert {row["op"].split(" ")[0] for row in rows} == every_suite
    assert all(row["median_ms"] > 0 for row in rows)
    assert (tmp_path / "bench-results" / "baselines" / "base.json").is_file()
    assert "| dropout | 16Mi | forward | cpu | float32 | torch |" in done.stdout
    assert elapsed < 120, f"bench --quick took {elapsed:.0f} s"
    pytest.importorskip("matplotlib")
    plot = tmp_path / "speedups.png"
    done = subprocess.run([sys.executable, "-m", "fastnets", "bench", "--load", str(tmp_path / "run.json"),
                           "--compare", "base", "--fail-above", "99%", "--plot", str(plot)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pytest_benchmark_entry(tmp_path):
    """`pytest bench/` runs the same cases under pytest-benchmark."""
    done = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "bench"), "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", "-k", "maxout and forward-cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 passed" in done.stdout
