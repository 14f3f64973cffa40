"""The error hierarchy of kvbucket's core.

The core raises these; one gRPC interceptor (server/errors.py) maps each class to a status code,
and the SDK maps status codes back. Errors are told apart by type, never by message text.
"""

from __future__ import annotations


class KVBucketError(Exception):
    """Base class; the message says what was wrong and how to fix it."""


class InvalidArgument(KVBucketError):
    """Malformed request: bad key, layout mismatch, unknown codec, wrong lengths."""


class ResourceExhausted(KVBucketError):
    """Too large for a frame, a tier or a quota."""


class DataLoss(KVBucketError):
    """Bytes did not match their checksum, or a record is corrupt."""


class Unauthenticated(KVBucketError):
    """No token, or a token the daemon does not know."""


class PermissionDenied(KVBucketError):
    """A known caller asked for something outside its tenant or rights."""


class NotFound(KVBucketError):
    """The named entry does not exist."""


class Unavailable(KVBucketError):
    """A tier or the daemon cannot be reached right now; retry later."""


class FailedPrecondition(KVBucketError):
    """The request is valid but the state does not allow it (e.g. destructive call without `all`)."""
