"""Training and judging a network: losses, the loop, evaluation, the shipped weights."""
