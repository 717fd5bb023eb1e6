"""The main job's terminal: a line per phase, the progress bar, sample answers and the
final line; library warnings and background tracebacks in <workdir>/log.txt."""

import os
import re
import subprocess

import pytest

from helpers import main_command, outside_env

from moe_jax.train import console


def terminal_lines(text: str) -> list[str]:
    """Lines as a terminal shows them: a progress bar redraws its line with \\r, so only
    the last drawing of each line counts."""
    return [line.split("\r")[-1] for line in text.replace("\r\n", "\n").split("\n") if line.split("\r")[-1].strip()]


def test_terminal_lines_counts_a_redrawn_bar_once():
    assert terminal_lines("a\n 10%|#  \r 50%|### \r100%|#####\nb\n") == ["a", "100%|#####", "b"]


@pytest.mark.slow  # ~25 s idle: one micro main job with its compiles
def test_a_short_main_job_says_little_and_logs_the_rest(tmp_path):
    workdir = tmp_path / "run"
    command = main_command(workdir, tmp_path / "data", ["train.progress_bar=True", "eval.show=2",
                                                                "eval.every=6"])
    out = subprocess.run(command, cwd=tmp_path, env=outside_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = terminal_lines(out.stdout) + terminal_lines(out.stderr)
    assert len(lines) <= 40, "\n".join(lines)
    assert "Traceback" not in out.stdout + out.stderr
    # One line per phase, then the answers and the headline last on stdout.
    stdout = terminal_lines(out.stdout)
    for phase in ("data:", "mesh ", "training:", "evaluating:"):
        assert sum(line.startswith(phase) for line in stdout) == 1, (phase, stdout)
    assert stdout[-1].startswith("held-out exact match:")
    assert sum(line.endswith(("ok", "WRONG")) for line in stdout) == 2
    assert re.search(r"12/12 \[", out.stderr), out.stderr[-500:]  # the bar reached the end
    assert "step 6: exact_match" in out.stderr  # the periodic evaluation, above the bar
    # What the libraries said is kept, next to the run's own lines.
    log = open(workdir / "log.txt").read()
    assert "Using custom data configuration" in log  # TFDS's long warning
    assert "held-out exact match:" in log
    assert "Using custom data configuration" not in out.stdout + out.stderr


def run_child(script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter (Console.start rewires its file descriptors)."""
    out = subprocess.run([os.sys.executable, "-c", script], env=outside_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def test_start_points_file_descriptors_at_the_log_and_keeps_the_terminal(tmp_path):
    """Console.start in a child process: C-level and Python writes to fds 1 and 2 land in
    the log, say() on the terminal (the child's original stdout)."""
    script = (
        "import os, sys, threading\n"
        "from moe_jax.train.console import Console, terminal_err\n"
        f"c = Console.start({str(tmp_path / 'log.txt')!r})\n"
        "os.write(2, b'from C++\\n'); print('a stray print'); print('a warning', file=sys.stderr)\n"
        "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()\n"
        "c.say('phase one'); c.error('an error line')\n"
        "assert terminal_err() is c.err\n")
    out = run_child(script)
    assert out.stdout == "phase one\n" and out.stderr == "an error line\n"
    log = open(tmp_path / "log.txt").read()
    for text in ("from C++", "a stray print", "a warning", "ZeroDivisionError", "phase one", "an error line"):
        assert text in log, text
    assert console.terminal_err() is os.sys.stderr  # nothing started in this process


@pytest.mark.parametrize("existing", ["", "an earlier run's messages\n"], ids=["new", "appended"])
def test_a_refusal_leaves_the_log_as_it_was(tmp_path, existing):
    """refuse() after the libraries wrote to the log: the terminal says why; the log is
    back to its bytes before the process started (absent, with its new directory, if
    there was none), even with a write after the refusal."""
    workdir = tmp_path / "run"
    if existing:
        workdir.mkdir()
        (workdir / "log.txt").write_text(existing)
    script = (
        "import os\n"
        "from moe_jax.train.console import Console\n"
        f"c = Console.start({str(workdir / 'log.txt')!r})\n"
        "os.write(2, b'a library message\\n'); c.say('phase one')\n"
        "c.refuse('error: another config')\n"
        "os.write(2, b'said on the way out\\n')\n")
    out = run_child(script)
    assert out.stdout == "phase one\n" and out.stderr == "error: another config\n"
    if existing:
        assert (workdir / "log.txt").read_text() == existing
    else:
        assert not workdir.exists()
