"""``python -m experiments.bench.faults``: per-call time, page faults and system time."""

from types import SimpleNamespace

import pytest

from experiments.bench import faults, fewshot


def test_each_row_is_what_its_call_added_to_the_processs_counters(one_thread, monkeypatch):
    """Scripted counters: each row's faults and system time are the call's increase, and the
    peak RSS (KiB on Linux) is in GiB."""
    counters = iter([(100, 1.0, 2 ** 20), (350, 1.5, 3 * 2 ** 20),      # call 1: before, after
                     (350, 1.5, 3 * 2 ** 20), (351, 1.5, 3 * 2 ** 20)])  # call 2
    monkeypatch.setattr(faults.resource, "getrusage", lambda who: SimpleNamespace(
        **dict(zip(("ru_minflt", "ru_stime", "ru_maxrss"), next(counters)))))
    rows = faults.run("core, loop", 2, fewshot.small(fewshot.SETTINGS["omniglot-20w1s"]))
    assert [(r["call"], r["minor_faults"], r["system_seconds"], r["peak_rss_gib"]) for r in rows] == [
        (1, 250, 0.5, 3.0), (2, 1, 0.0, 3.0)]
    assert all(r["seconds"] > 0 for r in rows)


def test_cli_refuses_an_unknown_implementation_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        faults.main(["--impl", "nope"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'nope'" in err and "Traceback" not in err
