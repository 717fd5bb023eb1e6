"""Ablation sweeps: an experiment's sweep() x seeds as runs, run and reported.

    plan.py     the grid x seeds as runs: a readable workdir and a command each
    launch.py   run them on this machine P at a time; skip finished, resume the rest
    runs.py     read what runs left in their workdirs
    report.py   one row per grid point: mean and Student-t 95% interval over seeds
    figures.py  the metric per point, loss curves, expert-load heatmaps, any runs compared

From the command line: `moe-jax sweep`, `moe-jax report`, `moe-jax compare`.
"""
