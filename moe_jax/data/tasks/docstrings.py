"""Plain English text with no download: windows of the docstrings of the Python standard
library that runs this code.

Every module, class and function docstring of the interpreter's standard library (its
tests and site-packages left out) is read with `ast`, cleaned as `inspect.cleandoc`
does, and kept when the char tokenizer can encode it (printable ASCII and newlines).
Each docstring is cut into consecutive, non-overlapping windows of `window` characters
(a shorter tail is dropped); an example is one window: the first `prompt_chars`
characters are the prompt, the rest the solution.

    prompt    'Builder which co'
    solution  'nstructs document fragments given XML source\\ntext and a ...'

What this task is for: a language model with real entropy per token, which a
sampling watermark needs (experiments/watermark.py); its quality measure is held-out
perplexity. `verify` asks for the held-out continuation verbatim, so exact match stays
near 0 on held-out windows by design. Every window has the same length, so a model
trained on them ends a text (<eos>) only after `window - prompt_chars` characters.

Splits are by prompt (the canonical key, as for every task; windows that begin alike
count once): a held-out window never appears in training, though another window of the
same docstring may. The windows depend on the
interpreter's version (`python` in the difficulty, checked on generation), so a dataset
built on one Python is not silently reused on another.
"""

from __future__ import annotations

import ast
import functools
import os
import string
import sys
import sysconfig
from typing import Any

import numpy as np

from moe_jax.data.tasks.base import Example, Task, field

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_ENCODABLE = frozenset(string.printable) - frozenset("\t\r\x0b\x0c")  # the char tokenizer's
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[str, ...]:
    """Every encodable docstring of this interpreter's standard library, sorted, once each."""
    root = sysconfig.get_paths()["stdlib"]
    found = set()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue  # a file this Python cannot read as source is simply not text here
            for node in ast.walk(tree):
                if isinstance(node, _DOCUMENTED):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and set(doc) <= _ENCODABLE:
                        found.add(doc)
    if not found:
        raise FileNotFoundError(f"no docstrings found under the standard library at {root}")
    return tuple(sorted(found))


@functools.lru_cache(maxsize=4)
def windows(window: int) -> tuple[str, ...]:
    """All distinct `window`-character windows of the docstrings, sorted."""
    cut = {doc[i:i + window] for doc in stdlib_docstrings()
           for i in range(0, len(doc) - window + 1, window)}
    return tuple(sorted(cut))


def generate(rng: np.random.Generator, *, window: int = 126, prompt_chars: int = 16,
             python: str = PYTHON) -> Example:
    """One random window of the standard library's docstrings."""
    if python != PYTHON:
        raise ValueError(f"docstrings: the corpus is this interpreter's standard library "
                         f"(Python {PYTHON}); the dataset asks for Python {python}")
    if not 0 < prompt_chars < window:
        raise ValueError(f"docstrings: prompt_chars = {prompt_chars}, expected 0 < prompt_chars "
                         f"< window = {window}")
    corpus = windows(window)
    text = corpus[int(rng.integers(len(corpus)))]
    solution = text[prompt_chars:]
    return Example(prompt=text[:prompt_chars], solution=solution, answer=solution)


def verify(example_or_fields: Any, response: str) -> bool:
    """The held-out continuation, verbatim (a recall test, not a quality measure)."""
    return isinstance(response, str) and response == field(example_or_fields, "answer")


def canonical_key(example: Example) -> str:
    """The prompt, as for the other tasks: windows that begin alike ("Return the numbe")
    are one problem, so no held-out prompt is ever a training prompt."""
    return example.prompt


TASK = Task(
    name="docstrings",
    example_cls=Example,
    generate=generate,
    verify=verify,
    canonical_key=canonical_key,
    default_difficulty=dict(window=126, prompt_chars=16, python=PYTHON),
)
