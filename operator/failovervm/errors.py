"""Exception types shared across the package."""


class FailoverVMError(Exception):
    """Base class for errors raised by failovervm."""
