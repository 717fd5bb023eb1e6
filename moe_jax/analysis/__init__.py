"""Reading a model: held-out exact match (exact_match.py), the teacher's slips a GRPO
policy still makes (slips.py), a membership-inference attack (membership.py), a
watermark's detection and cost (watermark_eval.py), on teacher-forced scores
(scoring.py). Each takes a loaded model and the records it is read on; loading them
(moe_jax.train.loader, moe_jax.data.splits) is the caller's."""
