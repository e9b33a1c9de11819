"""A whole study of trials of two Ray Train workers each, with a chosen trial repeated at a
second seed (a file of its own: test_study.py's studies run beside it under pytest-xdist)."""

import itertools
import json

import pytest

from rankstudy.core.records import RESULT_FILE, read_result
from studies import TINY, run_study, write_spec


@pytest.mark.slow
def test_multi_worker_trials_and_seed_repeats(tmp_path):
    """Trials of two Ray Train workers each, launched from the Tune function, and a chosen
    trial repeated at a second seed: the summary gives the mean and the spread."""
    spec = TINY | {
        "name": "tiny-w2",
        "task": TINY["task"] | {"train_size": 256},
        "training": TINY["training"] | {"steps": 10, "micro_batch_size": 8},
        "resources": {"workers": 2},
        "methods": ["matryoshka"],
        "search": {"trials_per_arm": 1},
        "seeds": [0, 1],
    }
    run_study(write_spec(tmp_path, spec), tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    m = summary["methods"]["matryoshka"]
    assert summary["seeds"] == [0, 1] and set(m["scores_by_seed"]) == {"0", "1"}
    per_seed = [m["scores_by_seed"][s] for s in ("0", "1")]
    assert m["scores"] == pytest.approx([(a + b) / 2 for a, b in zip(*per_seed, strict=True)])
    # ranks 1, 2, 4, 8 sit at log2 = 0, 1, 2, 3: each seed's AURAC is its mean trapezoid
    per_seed_aurac = [sum((a + b) / 2 for a, b in itertools.pairwise(c)) / 3 for c in per_seed]
    assert m["aurac_log2"] == pytest.approx(sum(per_seed_aurac) / 2)
    assert m["aurac_log2_std"] == pytest.approx(abs(per_seed_aurac[0] - per_seed_aurac[1]) / 2)
    assert m["cost"]["trials"] == 2
    results = [read_result(p) for p in (tmp_path / "out").glob(f"trials/*/*/{RESULT_FILE}")]
    assert {r.cost.devices for r in results} == {2}
    assert {r.seed for r in results} == {0, 1}
