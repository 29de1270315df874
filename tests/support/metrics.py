"""Scrape a real ``/metrics`` listener and read samples by name and labels.

    before = scrape(url)
    ... traffic ...
    after = scrape(url)
    assert after.value("intunnel_relay_requests_total", **{"class": "2xx"}) - \
        before.value("intunnel_relay_requests_total", **{"class": "2xx"}) == 3
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Samples:
    def __init__(self, text: str):
        self.text = text
        self.samples = {}
        self.families = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, default: float = 0.0, **labels) -> float:
        """One sample's value (``default`` when absent); labels named ``class_`` mean ``class``."""
        labels = {k.rstrip("_"): str(v) for k, v in labels.items()}
        return self.samples.get((name, frozenset(labels.items())), default)

    def has(self, name: str, **labels) -> bool:
        labels = {k.rstrip("_"): str(v) for k, v in labels.items()}
        return (name, frozenset(labels.items())) in self.samples

    def labels_of(self, name: str) -> list[dict]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


def scrape(url: str, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return Samples(resp.read().decode())
