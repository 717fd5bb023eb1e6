"""Reading results: figures drawn from runs."""
