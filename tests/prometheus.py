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


def value(samples: dict, name: str, **labels) -> float:
    """The sum of name's samples whose labels include labels (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, sample_labels), v in samples.items() if n == name and wanted <= sample_labels)
