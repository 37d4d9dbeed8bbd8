"""Prometheus metrics, in a registry per platform so that tests and processes never mix them."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bulles_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "bulles_http_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.audit_appends = Counter("bulles_audit_appends_total", "Audit events appended", registry=self.registry)
        self.audit_batches = Histogram(
            "bulles_audit_batch_events",
            "Events per group commit",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=self.registry,
        )
        self.audit_size = Gauge("bulles_audit_log_size", "Events in the audit log", registry=self.registry)

    def audit_batch(self, count: int) -> None:
        self.audit_appends.inc(count)
        self.audit_batches.observe(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests by route template (not raw path, which would explode cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], template).observe(time.perf_counter() - start)
