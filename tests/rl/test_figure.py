import json

import numpy as np
import pytest

from moe_jax.rl.figure import (_parse_variants, curves, main, plot_grpo, plot_router_health, plot_variants, routing_curves,
                             variant_table)


def write_metrics(workdir, records):
    with open(workdir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_curves_place_evaluations_at_the_minute_of_their_step(tmp_path):
    write_metrics(tmp_path, [
        {"step": 0, "eval/exact_match": 0.25},
        {"step": 1, "reward": 0.5, "correct": 0.4, "elapsed_seconds": 30.0},
        {"step": 2, "reward": 0.7, "correct": 0.6, "elapsed_seconds": 90.0},
        {"step": 2, "eval/exact_match": 0.5},
    ])
    c = curves(str(tmp_path))
    assert c["eval"] == [(0.0, 0.25), (1.5, 0.5)]
    assert c["reward"] == [(0.5, 0.5), (1.5, 0.7)]
    path = plot_grpo(str(tmp_path), str(tmp_path / "grpo.png"))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def _seed(workdir, i, eval_value=0.5):
    """A GRPO run's metrics over 2 steps, with routing figures of 2 MoE layers and the
    biases of 3 routers (2 experts each)."""
    workdir.mkdir()
    bias_0 = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    bias_2 = [[0.1, -0.2], [0.0, 0.05], [0.0, 0.0]]
    write_metrics(workdir, [
        {"step": 1, "clip_fraction": 0.1, "expert_changed": 0.2, "expert_recomputed_changed": 0.3,
         "rollout_seconds": 50.0, "routing/changed": [0.1, 0.3], "routing/entropy": [1.0, 1.2],
         "routing/bias": bias_0},
        {"step": 2, "clip_fraction": 0.3, "expert_changed": 0.2, "expert_recomputed_changed": 0.3,
         "rollout_seconds": 2.0 + i, "routing/changed": [0.1, 0.3], "routing/entropy": [1.0, 1.2],
         "routing/bias": bias_2},
    ] + ([{"step": 2, "eval/exact_match": eval_value + 0.1 * i}] if eval_value is not None else []))
    return str(workdir)


def test_variant_table_by_hand(tmp_path):
    a = [_seed(tmp_path / f"a{i}", i) for i in range(3)]
    b = [_seed(tmp_path / "b0", 0, 0.4), _seed(tmp_path / "b1", 1, None)]
    table = variant_table({"GRPO": a, "GSPO": b}, [2]).splitlines()
    assert table[0].startswith("| variant | seeds | exact match @ 2 | clip fraction |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    # Exact match 0.5, 0.6, 0.7: mean 60%, t(0.975, 2) 4.3027 x 0.1 / sqrt(3) = 24.8%.
    # Every run's clip fraction averages (0.1 + 0.3) / 2 = 20%, with no spread. Rollout
    # seconds leave out step 1 (compilation): 2, 3, 4 s -> 3 +- 4.3027 / sqrt(3) = 2.48.
    assert cells == ["GRPO", "3", "60.0% ± 24.8", "20.000% ± 0.000", "20.0% ± 0.0", "30.0% ± 0.0",
                     "3.00 ± 2.48"]
    # One seed of two evaluated at step 2: no interval, and the table says so.
    assert table[3].split("|")[3].strip() == "40.0% (1 of 2)"


def test_compare_reads_a_sweeps_directories_whose_names_hold_commas(tmp_path):
    """`moe-jax sweep` names a point by its fields (`importance=token,routing_replay=True`):
    --compare takes such a point, or the sweep's root, whole instead of splitting it."""
    root = tmp_path / "sweep"
    for point, base in (("importance=token,routing_replay=False", 0.5), ("importance=sequence,routing_replay=False", 0.2)):
        (root / point).mkdir(parents=True)
        for i in range(2):
            _seed(root / point / f"seed={i}", i, base)
    variants = _parse_variants([f"GRPO={root / 'importance=token,routing_replay=False'}"])
    assert variants == {"GRPO": [str(root / "importance=token,routing_replay=False" / f"seed={i}") for i in range(2)]}
    every_point = _parse_variants([str(root)])
    assert list(every_point) == ["importance=sequence,routing_replay=False", "importance=token,routing_replay=False"]
    table = variant_table(every_point, [2]).splitlines()
    assert [row.split("|")[3].strip() for row in table[2:]] == ["25.0% ± 63.5", "55.0% ± 63.5"]
    # Plain run directories still go as a comma-separated list; a missing one is named.
    plain = [_seed(tmp_path / f"run{i}", i) for i in range(2)]
    assert _parse_variants([f"GSPO={','.join(plain)}"]) == {"GSPO": plain}
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        _parse_variants([f"X={tmp_path / 'nowhere'}"])


def test_router_health_curves_and_figures(tmp_path):
    runs = [_seed(tmp_path / f"s{i}", i) for i in range(2)]
    c = routing_curves(runs[0])
    steps, changed = c["changed"]
    assert steps == [1, 2] and changed.tolist() == [[0.1, 0.3], [0.1, 0.3]]
    # Per router, the largest move of any expert's bias since the first logged step.
    np.testing.assert_allclose(c["bias_moved"][1], [[0.0, 0.0, 0.0], [0.2, 0.05, 0.0]])
    for path in (plot_router_health(runs[0], str(tmp_path / "routing.png")),
                 plot_variants({"GRPO": runs}, str(tmp_path / "variants.png"))):
        with open(path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="no routing"):
        plot_router_health(str(tmp_path), str(tmp_path / "none.png"))
    with pytest.raises(SystemExit, match="LABEL=DIR"):
        main(["--compare", str(tmp_path / "c.png"), "GRPO"])
