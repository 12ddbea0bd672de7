"""The one exception family of ``distill``: each message says what was expected."""


class DistillError(Exception):
    """Base of every error ``distill`` raises on purpose."""


class DataError(DistillError):
    """A data set is missing, empty, malformed, or has labels a model does not know."""


class ModelError(DistillError):
    """A model directory or hub id cannot be loaded, or is not a sequence classifier."""


class RegistryError(DistillError):
    """A registry operation names an unknown version or role, or cannot move a pointer."""
