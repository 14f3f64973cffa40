"""The one place where core errors become gRPC status codes (and RPCs are counted and timed)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time

import grpc

from kvbucket.core import errors
from kvbucket.server.metrics import Metrics

log = logging.getLogger(__name__)

STATUS: dict[type[errors.KVBucketError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(exc: errors.KVBucketError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def rpc(op: str):
    """Wrap a servicer method: map KVBucketError to its status, count and time the call.

    Works for unary handlers and for server-streaming handlers (async generators).
    """

    def wrap(fn):
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream(self, request, context):
                call = _Call(self.metrics, op)
                try:
                    async for item in fn(self, request, context):
                        yield item
                except errors.KVBucketError as exc:
                    await call.abort(context, exc)
                except BaseException:
                    call.failed()
                    raise
                finally:
                    call.done()

            return stream

        @functools.wraps(fn)
        async def unary(self, request, context):
            call = _Call(self.metrics, op)
            try:
                return await fn(self, request, context)
            except errors.KVBucketError as exc:
                await call.abort(context, exc)
            except BaseException:
                call.failed()
                raise
            finally:
                call.done()

        return unary

    return wrap


class _Call:
    """Counts and times one RPC under the status it ended with."""

    __slots__ = ("metrics", "op", "start", "code")

    def __init__(self, metrics: Metrics, op: str) -> None:
        self.metrics, self.op = metrics, op
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def refuse(self, exc: errors.KVBucketError) -> grpc.StatusCode:
        """Record that the call ends refused with `exc`'s status (counted as a rejection); the status."""
        self.code = status_of(exc)
        self.metrics.rejected.labels(self.code.name.lower()).inc()
        return self.code

    async def abort(self, context, exc: errors.KVBucketError) -> None:
        await context.abort(self.refuse(exc), str(exc))

    def failed(self) -> None:
        """A bug or a cancelled call, not a refusal: gRPC reports it; we count it."""
        if self.code is grpc.StatusCode.OK:
            self.code = grpc.StatusCode.CANCELLED if _cancelled() else grpc.StatusCode.INTERNAL

    def done(self) -> None:
        self.metrics.request_done(self.op, self.code.name, time.perf_counter() - self.start)


def _cancelled() -> bool:
    import sys

    exc = sys.exc_info()[1]
    return isinstance(exc, (asyncio.CancelledError, GeneratorExit))
