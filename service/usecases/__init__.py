"""What the service does for a client, whoever asks: the routes, the Ray entry point, tests.

Each use case takes the running `Services` and typed arguments, and returns typed results or
raises typed errors; the HTTP edge parses requests into those arguments and encodes the results.
"""
