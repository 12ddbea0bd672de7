"""The one exception type of the `router` package."""


class RouterError(ValueError):
    """Bad input or configuration for the router; the message names what was expected.

    A `ValueError`, so callers that validate generically still catch it; `serving/` turns it
    into HTTP 400.
    """
