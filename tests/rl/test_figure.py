import json

from moe_jax.rl.figure import curves, plot_grpo


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
