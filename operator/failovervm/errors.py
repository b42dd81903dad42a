"""Exception types shared across the package."""


class FailoverVMError(Exception):
    """Base class for errors raised by failovervm."""


class SandboxError(FailoverVMError):
    """The sandbox cannot be brought up, inspected or torn down."""
