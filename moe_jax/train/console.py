"""What a person watching a run reads, and where everything else goes.

    console = Console.start("runs/arith/log.txt")
    console.say("data: ...")          # the terminal (and the log)
    terminal_err()                    # the stream the progress bar draws on

A run's terminal should say one line per phase, show the progress bar, a few sample
answers and the final line. Libraries say much more: TFDS's long configuration
warnings, absl and orbax messages, XLA's C++ logging, and tracebacks printed by
background threads (orbax's async checkpointing reports "Event loop is closed" from its
own threads). Those write to the process's stdout and stderr, at the Python level or
straight to file descriptors 1 and 2 from C++, so `start` points both descriptors at
the log file and keeps duplicates of the terminal for the run's own messages. Nothing
restores them: background threads still print while the interpreter shuts down, and
that belongs in the log too.

Without `start` (a notebook, a test, a library caller) messages go to sys.stdout and
the progress bar to sys.stderr as usual.
"""

from __future__ import annotations

import faulthandler
import os
import sys

_active: "Console | None" = None


def terminal_out():
    return _active.out if _active is not None else sys.stdout


def terminal_err():
    return _active.err if _active is not None else sys.stderr


class Console:
    def __init__(self, log_path: str, out, err, log_file, size_at_start=None, made_dir=None):
        self.log_path, self.out, self.err, self.log_file = log_path, out, err, log_file
        # What `refuse` puts back: the log's length before this process appended to it
        # (None: there was no log), and the directory `start` created (None: it existed).
        self.size_at_start, self.made_dir = size_at_start, made_dir

    @classmethod
    def start(cls, log_path: str) -> "Console":
        """Send file descriptors 1 and 2 (and so sys.stdout, sys.stderr, C++ logging and
        every thread's tracebacks) to `log_path`, appended; keep the terminal for `say`."""
        global _active
        directory = os.path.dirname(os.path.abspath(log_path))
        made_dir = None if os.path.isdir(directory) else directory
        os.makedirs(directory, exist_ok=True)
        size_at_start = os.path.getsize(log_path) if os.path.exists(log_path) else None
        sys.stdout.flush()
        sys.stderr.flush()
        out = os.fdopen(os.dup(1), "w", buffering=1)
        err = os.fdopen(os.dup(2), "w", buffering=1)
        log_file = open(log_path, "a", buffering=1)
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        _active = cls(log_path, out, err, log_file, size_at_start, made_dir)
        # A fatal error in native code (a peer of a multi-host job lost, an XLA check)
        # aborts the process after writing its reason to fd 2, the log: leave at least the
        # fatal signal and where Python was on the terminal, so the run does not end silently.
        faulthandler.enable(file=err, all_threads=False)
        return _active

    def say(self, message: str) -> None:
        """One message for the person watching: on the terminal, and in the log in order
        with the libraries' messages."""
        print(message, file=self.out, flush=True)
        sys.stdout.flush()
        print(message, file=self.log_file, flush=True)

    def error(self, message: str) -> None:
        print(message, file=self.err, flush=True)
        print(message, file=self.log_file, flush=True)

    def refuse(self, message: str) -> None:
        """The run was refused before it changed anything (a config that cannot continue
        the workdir's run): say why on the terminal and take back what this process wrote
        to the log, so the workdir is byte for byte as it was. Whatever the libraries still
        print on the way out goes nowhere."""
        print(message, file=self.err, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        self.log_file.close()
        if self.size_at_start is None:
            os.remove(self.log_path)
            if self.made_dir is not None:
                try:
                    os.rmdir(self.made_dir)  # only if nothing else was written there
                except OSError:
                    pass
        else:
            os.truncate(self.log_path, self.size_at_start)
