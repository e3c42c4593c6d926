"""/api/v1/status/tsdb, /metrics, /-/healthy and /-/ready."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.writes import HEADERS, body

NOW = int(time.time() * 1000)


async def test_tsdb_status_counts(gob_client: Any) -> None:
    series = [({"__name__": "up", "job": "node", "instance": f"h{i}"}, [(NOW - 5000 + i, 1.0)])
              for i in range(3)]
    series.append(({"__name__": "temp", "job": "node", "instance": "h0"}, [(NOW - 9000, 20.0)]))
    resp = await gob_client.post("/api/v1/write", data=body(series), headers=HEADERS)
    assert resp.status == 204
    # Writing the same series again must not count twice.
    resp = await gob_client.post("/api/v1/write", data=body(series[:1]), headers=HEADERS)
    assert resp.status == 204
    resp = await gob_client.get("/api/v1/status/tsdb")
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["headStats"] == {"numSeries": 4, "numLabelPairs": 6, "chunkCount": 0,
                                 "minTime": NOW - 9000, "maxTime": NOW - 4998}
    assert data["seriesCountByMetricName"] == [{"name": "up", "value": 3},
                                               {"name": "temp", "value": 1}]
    assert data["seriesCountByLabelValuePair"][0] == {"name": "job=node", "value": 4}
    assert {"name": "instance", "value": 3} in data["labelValueCountByLabelName"]
    assert {"name": "__name__", "value": 2} in data["labelValueCountByLabelName"]
    assert {"name": "instance", "value": 6} in data["memoryInBytesByLabelName"]
    resp = await gob_client.get("/api/v1/status/tsdb", params={"limit": "1"})
    assert len((await resp.json())["data"]["seriesCountByMetricName"]) == 1


@pytest.mark.parametrize("limit", ["x", "0", "-1", "100000", "1.5"])
async def test_tsdb_status_bad_limit(gob_client: Any, limit: str) -> None:
    resp = await gob_client.get("/api/v1/status/tsdb", params={"limit": limit})
    assert resp.status == 400
    js = await resp.json()
    assert js["status"] == "error" and js["errorType"] == "bad_data"
    assert "invalid limit" in js["error"]


async def test_health_ready_and_metrics(gob_client: Any) -> None:
    assert (await gob_client.get("/-/healthy")).status == 200
    assert (await gob_client.get("/-/ready")).status == 200
    resp = await gob_client.post("/api/v1/write", headers=HEADERS, data=body(
        [({"__name__": "up"}, [(NOW, 1.0)]), ({"job": "x"}, [(NOW, 1.0), (NOW + 1, 2.0)])]))
    assert resp.status == 400
    text = await (await gob_client.get("/metrics")).text()
    assert 'gob_write_samples_received_total{tenant="anonymous"} 1.0' in text
    assert ('gob_discarded_samples_total{reason="missing_metric_name",tenant="anonymous"} 2.0'
            in text)
    assert 'gob_http_requests_total{code="400",handler="/api/v1/write"} 1.0' in text
    assert "gob_storage_insert_duration_seconds_bucket" in text
    assert "gob_write_batch_samples_count 1.0" in text


async def test_ready_fails_when_storage_is_closed(gob_client: Any) -> None:
    from gob_metrics.keys import STORAGE

    storage = gob_client.app[STORAGE]
    await storage.close()
    resp = await gob_client.get("/-/ready")
    assert resp.status == 503
    assert "not open" in await resp.text()
