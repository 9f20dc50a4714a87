"""Reading a /metrics page the way Prometheus does."""

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> dict:
    """{(sample name, frozenset of label pairs): value} for every sample on base_url's /metrics."""
    response = requests.get(base_url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return scrape_text(response.text)


def scrape_text(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


_MISSING = object()


def value(samples: dict, name: str, default=_MISSING, **labels) -> float:
    """The sum of name's samples whose labels include labels.

    A missing series fails the test (a renamed metric must not read as 0) unless a default is
    given, for a labelled series that only appears once something has happened.
    """
    wanted = set(labels.items())
    matches = [v for (n, sample_labels), v in samples.items() if n == name and wanted <= sample_labels]
    if not matches:
        if default is not _MISSING:
            return default
        known = sorted({n for n, _ in samples if n.split("_")[0] == name.split("_")[0]})[:20]
        raise AssertionError(f"no series {name}{labels or ''} on /metrics (similar: {known})")
    return sum(matches)
