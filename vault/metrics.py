"""Prometheus metrics: what ``GET /metrics`` serves (behind ``VAULT_METRICS_TOKEN``).

Three kinds of sources, so the rest of the code needs only one-line hooks:

* per application (:class:`Metrics`): HTTP requests, their latency per route template
  and status class, requests in flight, upload bytes and refusals — observed by
  :func:`metrics_middleware`, which sits inside the request-context middleware and so
  sees every request, its route template and the error code of a refusal;
* per process (:data:`vault.instruments.PROCESS`): pipeline stage seconds, root-key provider calls and
  audit group commits, observed where they happen (:func:`stage`,
  :class:`MeteredRootKey`, :func:`observe_audit_commit`);
* at scrape time (:class:`StateCollector`): job queue depth, oldest queued age and dead
  jobs per kind, live workers, KEK epoch age, audit checkpoint age, key-cache hits and
  misses, the face detector in use. Read from the database by the ``/metrics`` handler
  under a time bound (:meth:`StateCollector.refresh`), so a slow database makes the
  scrape report ``vault_metrics_refresh_ok 0`` instead of hanging it.

Labels are route templates, kinds, states, error codes and tenant slugs — never an id
from a URL, a token or anything about a patient.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select

from vault import errors
from vault.instruments import PROCESS  # noqa: F401 - rendered beside the app's registry

log = logging.getLogger("vault.metrics")

# Upload route templates: their request bodies are counted as upload bytes and their
# 4xx/5xx answers as refusals by error code.
UPLOAD_ROUTES = frozenset({("POST", "/v1/patients/{patient_id}/media")})

# -- per application --------------------------------------------------------------------
class Metrics:
    """With ``multiprocess_dir`` (``vault serve --processes N``, N > 1; prometheus_client's
    multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by the parent for each serving process)
    every process writes its samples to files there and a scrape, whichever process answers
    it, reads them all: the node's totals. The scrape-time families stay this process's
    reads (the database-derived ones are the same from any process)."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        #: the HTTP families: plain counts on the event loop's thread in one process (every request
        #: adds to them: prometheus-client's children take a lock per update), the library's shared
        #: files with several processes
        self.http: HttpFamilies | None = None
        if multiprocess_dir is None:
            self.http = HttpFamilies()
            r.register(self.http)
        else:
            self.requests = Counter(REQUESTS[0], REQUESTS[1], ["route", "method", "status"], registry=r)
            self.latency = Histogram(LATENCY[0], LATENCY[1], ["route", "method", "status_class"], buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.in_flight = Gauge("vault_http_requests_in_flight", "HTTP requests being handled", registry=r,
                               multiprocess_mode="livesum")
        #: requests being handled, a plain count read at scrape time (one process): two locked
        #: gauge updates per request less; several processes update the gauge's shared file
        self.handling: int | None = None
        if multiprocess_dir is None:
            self.handling = 0
            self.in_flight.set_function(lambda: self.handling or 0)
        self.upload_bytes = Counter("vault_upload_bytes", "Request body bytes received by upload routes", ["outcome"],
                                    registry=r)
        self.upload_refusals = Counter("vault_upload_refusals", "Uploads refused, by error code", ["reason"], registry=r)
        self.ready = Gauge("vault_ready_check", "1 when a readiness check passes (0 failed or degraded)", ["check"],
                           registry=r, multiprocess_mode="livemin")
        self.state = StateCollector()
        r.register(self.state)
        self._source: Any = None
        self._node: CollectorRegistry | None = None
        self.per_process: Gauge | None = None
        if multiprocess_dir is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._node = CollectorRegistry()
            MultiProcessCollector(self._node, path=str(multiprocess_dir))
            self._node.register(self.state)
            # which process answered how many: one series per live process (a pid label)
            self.per_process = Gauge("vault_http_process_requests", "HTTP requests answered by each serving process",
                                     registry=r, multiprocess_mode="liveall")

    def observe_readiness(self, report) -> None:
        for check in report.checks:
            self.ready.labels(check.name).set(1 if check.status == "ok" else 0)

    def bind(self, source: Any) -> None:
        """The open services the scrape-time reads use (``db``, ``keys``, ``media``,
        ``settings``): set by the composition root once its runtime is open, so the
        ``/metrics`` handler needs no runtime of its own."""
        self._source = source

    async def render(self, runtime: Any = None) -> bytes:
        await self.state.refresh(runtime if runtime is not None else self._source)
        if self._node is not None:  # the instruments of vault.instruments are in the files too
            return generate_latest(self._node)
        return generate_latest(self.registry) + generate_latest(PROCESS)


REQUESTS = ("vault_http_requests", "HTTP requests")
LATENCY = ("vault_http_request_seconds", "HTTP request latency by route template and status class")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_LE = tuple(floatToGoString(b) for b in LATENCY_BUCKETS) + ("+Inf",)


class HttpFamilies(Collector):
    """``vault_http_requests`` and ``vault_http_request_seconds`` of one serving process,
    exposed as prometheus-client's ``Counter`` and ``Histogram`` would expose them (same
    names, labels, buckets and ``_created`` samples), but counted in plain lists: updated
    only by the metrics middleware on the event loop's thread, read by a scrape on the
    same thread, so no lock is needed — where the library's children take four per
    request. Series are bounded as the labels are: route templates x methods x statuses."""

    def __init__(self) -> None:
        #: (route, method, status) -> [count, created]
        self._requests: dict[tuple[str, str, int], list[float]] = {}
        #: (route, method, status class) -> [count per bucket (last: +Inf)..., sum, created]
        self._latency: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counted = self._requests.get((route, method, status))
        if counted is None:
            counted = self._requests[(route, method, status)] = [0, time.time()]
        counted[0] += 1
        key = (route, method, f"{status // 100}xx")
        timed = self._latency.get(key)
        if timed is None:
            timed = self._latency[key] = [0] * len(_LE) + [0.0, time.time()]
        timed[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # a bound is inclusive (le): bisect_left
        timed[-2] += seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=["route", "method", "status"])
        for (route, method, status), (count, created) in self._requests.items():
            requests.add_metric([route, method, str(status)], count, created=created)
        yield requests
        latency = HistogramMetricFamily(*LATENCY, labels=["route", "method", "status_class"])
        for labels, timed in self._latency.items():
            cumulative = list(accumulate(timed[:len(_LE)]))
            latency.add_metric(list(labels), list(zip(_LE, cumulative)), sum_value=timed[-2])
            latency.add_sample(f"{LATENCY[0]}_created", dict(zip(("route", "method", "status_class"), labels)), timed[-1])
        yield latency


# Beside the class, not in vault/appkeys.py: that module imports this one for the type.
METRICS = web.AppKey("metrics", Metrics)


def make_metrics_middleware(route_template):
    """The middleware that fills the HTTP families; ``route_template(request)`` is the
    logging one, so metrics and logs name routes alike."""

    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # bounded: route templates x methods x statuses

    @web.middleware
    async def metrics_middleware(request: web.Request, handler):
        metrics: Metrics = request.app[METRICS]
        started = time.perf_counter()
        if metrics.handling is None:
            metrics.in_flight.inc()
        else:
            metrics.handling += 1
        status: int = 500
        reason: str | None = "internal"
        try:
            response = await handler(request)
            status, reason = response.status, None
            return response
        except errors.VaultError as exc:
            status, reason = exc.status, exc.code
            raise
        except web.HTTPException as exc:
            status, reason = exc.status, {413: "too_large"}.get(exc.status, "http_error")
            raise
        except (ConnectionError, asyncio.CancelledError):
            status, reason = 499, "client_abort"
            raise
        finally:
            if metrics.handling is None:
                metrics.in_flight.dec()
            else:
                metrics.handling -= 1
            route = route_template(request)
            if metrics.http is not None:
                metrics.http.observe(route, request.method, status, time.perf_counter() - started)
            else:
                series = children.get((route, request.method, status))
                if series is None:  # each (route, method, status) once: labels() validates and locks
                    series = children[(route, request.method, status)] = (
                        metrics.requests.labels(route, request.method, str(status)),
                        metrics.latency.labels(route, request.method, f"{status // 100}xx"))
                series[0].inc()
                series[1].observe(time.perf_counter() - started)
            if metrics.per_process is not None:
                metrics.per_process.inc()
            if (request.method, route) in UPLOAD_ROUTES:
                received = request.content.total_bytes
                metrics.upload_bytes.labels("stored" if status < 400 else "refused").inc(received)
                if status >= 400:
                    metrics.upload_refusals.labels(reason or f"http_{status}").inc()

    return metrics_middleware


def authorized(request: web.Request, token: str | None) -> bool:
    """``/metrics`` answers only a scraper holding the metrics token (compared in
    constant time); without a configured token it does not exist (404)."""
    if not token:
        raise errors.NotFound()
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise errors.Unauthorized(message="the metrics token is required")
    return True


# -- scrape time ----------------------------------------------------------------------
class StateCollector(Collector):
    """Families read from the database and the key store at scrape time. ``refresh`` runs
    the reads (bounded); ``collect`` only turns the last snapshot into families, because
    prometheus-client calls collectors synchronously."""

    def __init__(self) -> None:
        self._snapshot: dict[str, Any] = {}
        self._ok = 0
        self._seconds = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, runtime: Any) -> None:
        if runtime is None:
            return
        async with self._lock:  # concurrent scrapes share one set of reads
            started = time.perf_counter()
            try:
                self._snapshot = await asyncio.wait_for(_read_state(runtime), runtime.settings.metrics_refresh_seconds)
                self._ok = 1
            except Exception as exc:  # noqa: BLE001 - a failed read is itself a metric, never a 500
                log.warning("metrics refresh failed", extra={"error": type(exc).__name__})
                self._ok = 0
            self._seconds = time.perf_counter() - started

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        ok = GaugeMetricFamily("vault_metrics_refresh_ok", "1 when the last scrape-time database read succeeded")
        ok.add_metric([], self._ok)
        yield ok
        took = GaugeMetricFamily("vault_metrics_refresh_seconds", "Seconds the last scrape-time read took")
        took.add_metric([], self._seconds)
        yield took
        if not snap:
            return
        queued = GaugeMetricFamily("vault_jobs_queued", "Jobs queued, by kind (due or not)", labels=["kind"])
        running = GaugeMetricFamily("vault_jobs_running", "Jobs running, by kind", labels=["kind"])
        dead = GaugeMetricFamily("vault_jobs_dead", "Dead jobs (attempts exhausted), by kind", labels=["kind"])
        oldest = GaugeMetricFamily("vault_jobs_oldest_queued_seconds",
                                   "Age of the oldest due queued job, by kind (0 when none is due)", labels=["kind"])
        for kind, row in sorted(snap["jobs"].items()):
            queued.add_metric([kind], row["queued"])
            running.add_metric([kind], row["running"])
            dead.add_metric([kind], row["dead"])
            oldest.add_metric([kind], row["oldest"])
        yield from (queued, running, dead, oldest)
        workers = GaugeMetricFamily("vault_workers_live", "Workers whose heartbeat is fresh (vault worker processes)")
        workers.add_metric([], snap["workers"])
        yield workers
        kek = GaugeMetricFamily("vault_kek_epoch_age_seconds", "Age of each tenant's active KEK version",
                                labels=["tenant"])
        for tenant, age in sorted(snap["kek"].items()):
            kek.add_metric([tenant], age)
        yield kek
        period = GaugeMetricFamily("vault_kek_rotation_period_seconds", "VAULT_KEK_ROTATION_DAYS in seconds")
        period.add_metric([], snap["rotation_seconds"])
        yield period
        checkpoint = GaugeMetricFamily(
            "vault_audit_checkpoint_age_seconds",
            "Seconds since the newest signed checkpoint of each tenant whose chain has moved past it (0 when covered)",
            labels=["tenant"])
        for tenant, age in sorted(snap["checkpoints"].items()):
            checkpoint.add_metric([tenant], age)
        yield checkpoint
        hits = CounterMetricFamily("vault_key_cache_hits", "Unwrapped-key cache hits on this node")
        hits.add_metric([], snap["cache_hits"])
        misses = CounterMetricFamily("vault_key_cache_misses", "Unwrapped-key cache misses on this node")
        misses.add_metric([], snap["cache_misses"])
        entries = GaugeMetricFamily("vault_key_cache_entries", "Unwrapped keys cached on this node, by kind",
                                    labels=["kind"])
        for kind in ("kek", "dek", "obj", "idx"):
            entries.add_metric([kind], snap["cache_kinds"].get(kind, 0))
        evicted = CounterMetricFamily("vault_key_cache_scope_evictions",
                                      "Cached keys dropped because they were destroyed (on this node or another)")
        evicted.add_metric([], snap["cache_scope_evictions"])
        yield from (hits, misses, entries, evicted)
        detector = GaugeMetricFamily("vault_face_detector_info",
                                     "The face detector set the decoder workers loaded (\"none\": every photo counts as a face)",
                                     labels=["detector"])
        detector.add_metric([snap["detector"] or "none"], 1)
        yield detector


async def _read_state(rt: Any) -> dict[str, Any]:
    from vault.audit.models import AuditCheckpoint, AuditEntry, AuditHead
    from vault.jobs.heartbeat import live_workers
    from vault.jobs.models import DEAD, QUEUED, RUNNING, Job
    from vault.tenants.models import Tenant

    now = datetime.now(timezone.utc)
    due = case((Job.state == QUEUED, Job.run_at), else_=None)
    jobs: dict[str, dict[str, float]] = {}
    async with rt.db.session() as session:
        rows = (await session.execute(
            select(Job.kind, Job.state, func.count(), func.min(due))
            .where(Job.state.in_((QUEUED, RUNNING, DEAD)))
            .group_by(Job.kind, Job.state)
        )).all()
        for kind, state, count, first in rows:
            row = jobs.setdefault(kind, {"queued": 0, "running": 0, "dead": 0, "oldest": 0.0})
            row[state] = int(count)
            if state == QUEUED and first is not None:
                row["oldest"] = max(0.0, (now - _aware(first)).total_seconds())
        tenants = {t.id: t.slug for t in (await session.execute(select(Tenant.id, Tenant.slug))).all()}
        latest = (select(AuditCheckpoint.tenant_id, func.max(AuditCheckpoint.seq).label("seq"),
                         func.max(AuditCheckpoint.signed_at).label("signed_at"))
                  .group_by(AuditCheckpoint.tenant_id).subquery())
        first_entry = (select(AuditEntry.tenant_id, AuditEntry.at).where(AuditEntry.seq == 1).subquery())
        heads = (await session.execute(
            select(AuditHead.tenant_id, AuditHead.seq, latest.c.seq, latest.c.signed_at, first_entry.c.at)
            .outerjoin(latest, latest.c.tenant_id == AuditHead.tenant_id)
            .outerjoin(first_entry, first_entry.c.tenant_id == AuditHead.tenant_id)
        )).all()
    checkpoints: dict[str, float] = {}
    for tenant_id, head_seq, signed_seq, signed_at, first_at in heads:
        if head_seq == 0 or (signed_seq is not None and signed_seq >= head_seq):
            age = 0.0
        else:  # entries not covered by a signature: since the last signature, or since the first entry
            since = signed_at if signed_at is not None else first_at
            age = max(0.0, (now - _aware(since)).total_seconds()) if since is not None else 0.0
        checkpoints[tenants.get(tenant_id, tenant_id)] = age
    kek: dict[str, float] = {}
    for tenant_id, slug in tenants.items():
        try:
            versions = await rt.keys.kek_versions(tenant_id)
        except Exception:  # noqa: BLE001 - a tenant without a hierarchy yet has no epoch
            continue
        active = [v for v in versions if v.state == "active"]
        if active:
            kek[slug] = max(0.0, (now - _aware(active[-1].created_at)).total_seconds())
    cache = getattr(rt.keys, "_cache", None)  # keys/ stays free of Prometheus: read its plain counters
    pipeline = getattr(rt.media, "pipeline", None)
    return {
        "jobs": jobs,
        "workers": await live_workers(rt.db),
        "kek": kek,
        "rotation_seconds": rt.settings.kek_rotation_days * 86400,
        "checkpoints": checkpoints,
        "cache_hits": getattr(cache, "hits", 0),
        "cache_misses": getattr(cache, "misses", 0),
        "cache_kinds": cache.kinds() if cache is not None else {},
        "cache_scope_evictions": getattr(cache, "scope_evictions", 0),
        "detector": pipeline.detector_name() if pipeline is not None else "",
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
