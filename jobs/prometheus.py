"""/metrics in the Prometheus text format, read from the database and Redis at scrape time."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F
from django.utils import timezone
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from jobs import planner
from jobs.models import Job
from nodes.models import Node
from workers import protocol

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
WINDOW = timedelta(hours=1)

def _histogram(name: str, doc: str, values: list[float]) -> GaugeHistogramMetricFamily:
    buckets = [(floatToGoString(bound), float(sum(1 for v in values if v <= bound)))
               for bound in SECONDS]
    buckets.append(("+Inf", float(len(values))))
    return GaugeHistogramMetricFamily(name, doc, buckets=buckets, gsum_value=sum(values))

class PortalCollector:
    def collect(self):
        by_state = GaugeMetricFamily("portal_jobs", "Jobs by state and kind.",
                                     labels=["state", "kind"])
        for row in Job.objects.values("state", "kind").annotate(n=Count("id")).order_by():
            by_state.add_metric([row["state"], row["kind"]], row["n"])
        yield by_state

        since = timezone.now() - WINDOW
        recent = Job.objects.filter(finished_at__gte=since, started_at__isnull=False)
        durations = [d.total_seconds() for d in recent.annotate(
            d=F("finished_at") - F("started_at")).values_list("d", flat=True)[:100_000]]
        waits = [d.total_seconds() for d in recent.annotate(
            d=F("started_at") - F("created_at")).values_list("d", flat=True)[:100_000]]
        yield _histogram("portal_job_duration_seconds",
                         "Run time of the jobs that finished in the last hour.", durations)
        yield _histogram("portal_dispatch_latency_seconds",
                         "Submit to start of the jobs that finished in the last hour.", waits)

        for name, doc in (("cpu", "CPU use, percent."), ("mem", "Memory use, percent.")):
            gauge = GaugeMetricFamily(f"portal_node_{name}_percent", doc, labels=["node"])
            for node in Node.objects.all():
                gauge.add_metric([node.name], float(node.utilization.get(name) or 0.0))
            yield gauge
        gpu = GaugeMetricFamily("portal_node_gpu_percent", "GPU use, percent.",
                                labels=["node", "gpu"])
        online = GaugeMetricFamily("portal_node_online", "1 if the node is online.",
                                   labels=["node", "state"])
        for node in Node.objects.all():
            online.add_metric([node.name, node.state], float(node.state == "online"))
            for card in node.utilization.get("gpus") or []:
                if "util" in card:
                    gpu.add_metric([node.name, str(card["index"])], float(card["util"]))
        yield gpu
        yield online

        nodes = GaugeMetricFamily(
            "portal_queue_nodes_wanted", "Nodes that would run each queue's running jobs and "
            "drain its waiting ones within TARGET_DRAIN_S, at the measured run times.",
            labels=["queue"])
        for queue, wanted in sorted(planner.nodes_wanted(settings.TARGET_DRAIN_S).items()):
            nodes.add_metric([queue], wanted)
        yield nodes

        depth = GaugeMetricFamily("portal_queue_depth", "Messages waiting in each queue.",
                                  labels=["queue"])
        lag = GaugeMetricFamily("portal_ingester_lag_events",
                                "Stream entries not yet written by the ingester.")
        try:
            client = protocol.redis_client()
            pipe = client.pipeline(transaction=False)
            for queue in settings.JOB_QUEUES:
                pipe.llen(queue)
            for queue, n in zip(settings.JOB_QUEUES, pipe.execute(), strict=True):
                depth.add_metric([queue], n)
            groups = client.xinfo_groups(protocol.EVENTS_STREAM)
            lag.add_metric([], sum((g.get("lag") or 0) + (g.get("pending") or 0)
                                   for g in groups))
        except Exception:  # Redis away: the gauges are simply absent from this scrape
            pass
        yield depth
        yield lag

def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PortalCollector())
    return reg
