"""The text a pointwise generative reward model (GRM) reads and writes.

DeepSeek-GRM's pointwise GRM is shown a query and n responses and writes, in order,
principles (what a good answer must satisfy, chosen for this query), a critique of
each response against them, and one integer score in 1..10 per response:

    prompt (built by `grm_prompt`)          trajectory (written by the GRM)
    Q:12+34-5=                              Principles: 3 terms, width 3.
    R1:+210+430=+640-500=+140>41            Critique: R1 ok. R2 step 2 total +150 wrong, expected +140.
    R2:+210+430=+640-500=+150>51            Final Scores: [[9, 2]]

Responses are numbered from 1 as the paper's prompt does; scores follow that order.
Texts stay short (every character is a token of the tiny char-level models) and use
only characters the char tokenizer has.

Hinted sampling (SPCT's rejective fine-tuning) names the labelled best response after
the input, `hinted_prompt`: "...R2:+210+430=+640-500=+150>51\nBest: R1\n". The hint only
steers sampling; accepted trajectories are fine-tuned on the input without it.

The meta reward model reads a GRM prompt, one trajectory and `META_SUFFIX`, and is
trained to continue with `META_YES` when the trajectory's verdict is right (its scores
single out the truly best response) and `META_NO` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

PRINCIPLES = "Principles:"
CRITIQUE = "Critique:"
FINAL_SCORES = "Final Scores:"
MIN_SCORE, MAX_SCORE = 1, 10

# What of each response the GRM is shown: "full" (the worked solution) or "answer" (only
# its final answer, ">41"). A GRM that checks answers against its own solution (the
# `solve` critique) shown full responses learns to copy one response's working as its
# own solution; shown answers only, it has nothing to copy and has to solve.
RESPONSE_VIEWS = ("full", "answer")

HINT = "Best:"
META_SUFFIX = "\nVerdict right?"
META_YES, META_NO = "Y", "N"


def grm_prompt(query: str, responses: Sequence[str]) -> str:
    """The GRM's input: the query, then each response on its own numbered line."""
    if not responses:
        raise ValueError("responses: expected at least one response to score, got none")
    for i, response in enumerate(responses):
        if "\n" in response:
            raise ValueError(f"responses[{i}]: expected a single line, got {response!r}")
    lines = [f"Q:{query}"] + [f"R{i + 1}:{r}" for i, r in enumerate(responses)]
    return "\n".join(lines) + "\n"


def hinted_prompt(grm_input: str, best: int) -> str:
    """`grm_input` (from grm_prompt) with the labelled best response (index from 0) named."""
    if not isinstance(best, int) or best < 0:
        raise ValueError(f"best: expected the index of the best response, got {best!r}")
    return f"{grm_input}{HINT} R{best + 1}\n"


def shown_response(response: str, view: str = "full") -> str:
    """What the GRM reads of `response` (RESPONSE_VIEWS). In the worked-solution format the
    final answer follows the last ">"; a response without one shows as "" (no answer)."""
    if view == "full":
        return response
    if view == "answer":
        head, sep, answer = response.rpartition(">")
        return f">{answer.strip()}" if sep else ""
    raise ValueError(f"view {view!r}: expected one of {RESPONSE_VIEWS}")


def scores_line(scores: Sequence[int]) -> str:
    """`Final Scores: [[a, b]]`, the line both parsers accept."""
    return f"{FINAL_SCORES} [[{', '.join(str(int(s)) for s in scores)}]]"


def trajectory(principles: str, critique: str, scores: Sequence[int]) -> str:
    """A full GRM output from its three parts (what the rule-based teacher writes)."""
    return f"{PRINCIPLES} {principles}\n{CRITIQUE} {critique}\n{scores_line(scores)}"


def meta_prompt(grm_input: str, grm_output: str) -> str:
    """The meta RM's input: the GRM's prompt and one of its trajectories, then a question."""
    return grm_input + grm_output.replace("\n", " ") + META_SUFFIX
