"""Reading finished runs: held-out loss of a checkpoint (heldout_loss.py), the teacher's
slips a GRPO policy still makes (slips.py)."""
