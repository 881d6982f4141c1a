"""``python -m experiments.bench.overhead``: paired per-round ratios beside the medians."""

import pytest

from experiments.bench import fewshot, overhead


def test_ratios_are_per_round_times_over_the_plain_loops(monkeypatch, one_thread):
    ticks = iter(range(1000))
    monkeypatch.setattr(overhead.time, "perf_counter", lambda: float(next(ticks)) ** 2)
    medians, ratios = overhead.run(rounds=2, setting=fewshot.small(fewshot.SETTINGS["omniglot-20w1s"]))
    assert overhead.PLAIN in medians and overhead.PLAIN not in ratios
    assert set(ratios) == set(medians) - {overhead.PLAIN}
    # the fake clock makes each later call longer: call c runs from tick 2c to 2c+1 and lasts
    # (2c+1)^2 - (2c)^2 = 4c+1; the order turns by one each round, so implementation i runs at
    # position (i - r) mod n of round r
    order = list(medians)
    i, j = order.index("core, loop"), order.index(overhead.PLAIN)
    n = len(order)

    def length(k, r):
        return 4 * (r * n + (k - r) % n) + 1
    want = [length(i, r) / length(j, r) for r in range(2)]
    assert ratios["core, loop"] == pytest.approx(want)


def test_cli_prints_the_ratio_and_refuses_an_unknown_setting(capsys, monkeypatch, one_thread):
    monkeypatch.setitem(fewshot.SETTINGS, "omniglot-20w1s", fewshot.small(fewshot.SETTINGS["omniglot-20w1s"]))
    assert overhead.main(["--rounds", "2", "--setting", "omniglot-20w1s"]) == 0
    out = capsys.readouterr().out
    assert "core, loop / autograd loop, per round: median" in out
    with pytest.raises(SystemExit) as exit_:
        overhead.main(["--setting", "nope"])
    assert exit_.value.code == 2 and "'nope'" in capsys.readouterr().err
