"""The one place where core errors become gRPC status codes (and RPCs are counted and timed)."""

from __future__ import annotations

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
                metrics: Metrics = self.metrics
                start = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    async for item in fn(self, request, context):
                        yield item
                except errors.KVBucketError as exc:
                    code = status_of(exc)
                    metrics.rejected.labels(code.name.lower()).inc()
                    await context.abort(code, str(exc))
                finally:
                    metrics.requests.labels(op, code.name).inc()
                    metrics.request_seconds.labels(op).observe(time.perf_counter() - start)

            return stream

        @functools.wraps(fn)
        async def unary(self, request, context):
            metrics: Metrics = self.metrics
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except errors.KVBucketError as exc:
                code = status_of(exc)
                metrics.rejected.labels(code.name.lower()).inc()
                await context.abort(code, str(exc))
            finally:
                metrics.requests.labels(op, code.name).inc()
                metrics.request_seconds.labels(op).observe(time.perf_counter() - start)

        return unary

    return wrap
