"""Tasks: data and a score in [0, 1] for a model evaluated at some adapter rank."""
