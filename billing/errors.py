"""Errors the billing library raises on purpose.

::

    PermanentError (byoc_agent.protocol.errors)
    ├── InvalidArgumentError
    │   ├── InvalidUsageError        a usage record that breaks a rule (times, units)
    │   ├── InvalidRateError         a price that breaks a rule (negative, too precise)
    │   └── InvalidPeriodError       a billing period that is not a YYYY-MM month
    ├── UnpricedResourceError        no rate in force for a resource at a usage second
    ├── UsageConflictError           the same dedupe key arrived with different content
    ├── InvoiceFinalizedError        an attempt to change or redraft a finalized invoice
    └── InvoiceIntegrityError        a finalized invoice whose content no longer matches its hash

They all share the project's root, :class:`CorralError`, and none is retryable: the
same input fails the same way.
"""

from __future__ import annotations

from byoc_agent.protocol.errors import InvalidArgumentError, PermanentError


class InvalidUsageError(InvalidArgumentError):
    """A usage record breaks a validation rule."""


class InvalidRateError(InvalidArgumentError):
    """A price book rate breaks a validation rule."""


class InvalidPeriodError(InvalidArgumentError):
    """A billing period is not a ``YYYY-MM`` calendar month."""


class UnpricedResourceError(PermanentError):
    """No rate is in force for a resource at the second it was used."""


class UsageConflictError(PermanentError):
    """A record reused a dedupe key with different content."""


class InvoiceFinalizedError(PermanentError):
    """A finalized invoice cannot be changed, redrafted or finalized again."""


class InvoiceIntegrityError(PermanentError):
    """A finalized invoice no longer matches the content hash recorded at finalization."""
