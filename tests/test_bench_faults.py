"""``python -m experiments.bench.faults``: per-call time, page faults and system time."""

import pytest

from experiments.bench import faults, fewshot


def test_each_call_gets_its_own_row_with_the_faults_it_caused(one_thread):
    rows = faults.run("core, vmap", 2, fewshot.small(fewshot.SETTINGS["omniglot-20w1s"]))
    assert [r["call"] for r in rows] == [1, 2]
    assert all(r["seconds"] > 0 and r["minor_faults"] >= 0 and r["system_seconds"] >= 0 for r in rows)
    assert rows[1]["peak_rss_gib"] >= rows[0]["peak_rss_gib"] > 0.01


def test_cli_refuses_an_unknown_implementation_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        faults.main(["--impl", "nope"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'nope'" in err and "Traceback" not in err
