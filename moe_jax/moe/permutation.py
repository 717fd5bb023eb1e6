"""Moving rows between token order and a dispatch buffer, with gather-only backwards.

Shapes: S tokens, D model, K experts per token, R rows of the buffer (expert-sorted rows
for dropless, [E * C] slots for capacity).

A dispatch buffer holds copies of token rows: row r is token row_token[r], and
assignment (s, k) lives in row assignment_row[s, k]. Both maps describe one partial
permutation, so the transpose of a gather through one is a gather through the other.
XLA differentiates a gather into a scatter-add, which on CPU runs row by row and needs
a zero-filled buffer first; these custom VJPs use gathers both ways.

Conventions: row_token[r] == S marks a buffer row holding no token (padding, an empty
slot); assignment_row[s, k] == R marks an assignment that has no row (dropped). Both
read as zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _take_rows(table, index):
    """table[index] along axis 0, zeros where index == len(table)."""
    return table.at[index].get(mode="fill", fill_value=0)


@jax.custom_vjp
def permute(x, row_token, assignment_row):
    """x: [S, D] -> xs: [R, D], xs[r] = x[row_token[r]] (zeros where no token)."""
    return _take_rows(x, row_token)


def _permute_fwd(x, row_token, assignment_row):
    return permute(x, row_token, assignment_row), (assignment_row,)


def _permute_bwd(residuals, d_xs):
    (assignment_row,) = residuals
    # The copies of token s are exactly the rows assignment_row[s, :], so summing those is
    # the transpose of the gather. Rows holding no token are read by nobody.
    copies = _take_rows(d_xs, assignment_row)  # [S, K, D]
    return jnp.sum(copies.astype(jnp.float32), axis=1).astype(d_xs.dtype), None, None


permute.defvjp(_permute_fwd, _permute_bwd)


@jax.custom_vjp
def combine(out, combine_weights, assignment_row, row_token, row_assignment):
    """out: [R, D] -> y: [S, D] float32, y[s] = sum_k w[s, k] * out[assignment_row[s, k]].

    combine_weights (w): [S, K]; row_token: [R] as above; row_assignment: [R] flat index
    s * K + k of the assignment in each row, S * K where none (used by the backward).
    """
    gathered = _take_rows(out, assignment_row).astype(jnp.float32)  # [S, K, D]
    return jnp.sum(gathered * combine_weights.astype(jnp.float32)[:, :, None], axis=1)


def _combine_fwd(out, combine_weights, assignment_row, row_token, row_assignment):
    y = combine(out, combine_weights, assignment_row, row_token, row_assignment)
    return y, (out, combine_weights, assignment_row, row_token, row_assignment)


def _combine_bwd(residuals, dy):
    out, combine_weights, assignment_row, row_token, row_assignment = residuals
    # In row order: each row needs dy of its token, gathered once and used twice.
    dy_rows = _take_rows(dy, row_token)  # [R, D]
    row_weight = _take_rows(combine_weights.reshape(-1).astype(jnp.float32), row_assignment)  # [R]
    d_out = (dy_rows * row_weight[:, None]).astype(out.dtype)  # [R, D]
    d_row_weight = jnp.sum(out.astype(jnp.float32) * dy_rows, axis=1)  # [R] = <out[r], dy[s]>
    d_weights = _take_rows(d_row_weight, assignment_row).astype(combine_weights.dtype)  # [S, K]
    return d_out, d_weights, None, None, None


combine.defvjp(_combine_fwd, _combine_bwd)
