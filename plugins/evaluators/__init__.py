"""Built-in evaluators."""
