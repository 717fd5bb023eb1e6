"""Knowledge distillation: the temperature-scaled KL + cross-entropy loss (losses.py),
temperature schedules (schedule.py) and the teacher-student train step (step.py)."""
