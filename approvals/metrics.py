"""Approval analytics in ``/metrics``: the same numbers as the admin page and the REST endpoint."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from approvals.analytics import APPROVAL_METRICS, approval_stats_collect


class ApprovalStatsCollector(Collector):
    """One ``approval_stats`` per scrape, each sample a gauge (quantiles carry a ``quantile`` label)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for sample in approval_stats_collect():
            family = families.get(sample.name)
            if family is None:
                _kind, help_text = APPROVAL_METRICS[sample.name]
                family = families[sample.name] = GaugeMetricFamily(sample.name, help_text,
                                                                   labels=sorted(sample.labels))
            family.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
        yield from families.values()
