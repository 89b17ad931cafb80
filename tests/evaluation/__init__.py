"""Task evaluation: tasks, scorers, generation, lm-eval, the evaluate command, runs and their reports, two ranks."""
