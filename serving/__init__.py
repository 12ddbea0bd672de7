"""The cascade served on Ray Serve: HTTP API, escalation log, metrics, and the ``cascade`` CLI."""
