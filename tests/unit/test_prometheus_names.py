"""The OTLP → Prometheus naming of `tests/support/prometheus_names.py` against the translator's own
expectations (collector-contrib `normalize_name_test.go`, the cases that hold in 0.111.0) and
against every metric mailsvc exports today."""

from __future__ import annotations

import pytest

from tests.support.prometheus_names import MetricKind, clean, prometheus_label, prometheus_name, prometheus_series

# (OTLP name, unit, kind, monotonic, Prometheus name): the upstream translator's test cases
UPSTREAM: list[tuple[str, str, MetricKind, bool, str]] = [
    ("system.filesystem.usage", "By", "gauge", False, "system_filesystem_usage_bytes"),
    ("system.io", "By", "sum", True, "system_io_bytes_total"),
    ("network_transmitted_bytes_total", "By", "sum", True, "network_transmitted_bytes_total"),
    ("\t system.filesystem.usage       ", "  By\t", "gauge", False, "system_filesystem_usage_bytes"),
    ("system.network.dropped", "{packets}", "gauge", False, "system_network_dropped"),
    ("system.network.dropped", "{packets}", "sum", True, "system_network_dropped_total"),
    ("system.network.dropped", "packets", "gauge", False, "system_network_dropped_packets"),
    ("system.network.packets.dropped", "packets", "gauge", False, "system_network_packets_dropped"),
    ("system.network.packets", "packets", "sum", True, "system_network_packets_total"),
    ("hw.gpu.memory.utilization", "1", "gauge", False, "hw_gpu_memory_utilization_ratio"),
    ("hw.fan.speed_ratio", "1", "gauge", False, "hw_fan_speed_ratio"),
    ("objects", "1", "sum", True, "objects_total"),
    ("hw.cpu.speed_limit", "Hz", "gauge", False, "hw_cpu_speed_limit_hertz"),
    ("broken.metric.speed", "km/h", "gauge", False, "broken_metric_speed_km_per_hour"),
    ("astro.light.speed_limit", "m/s", "gauge", False, "astro_light_speed_limit_meters_per_second"),
    ("broken.metric.success_ratio", "%", "gauge", False, "broken_metric_success_ratio_percent"),
    ("broken.metric.success_percent", "%", "gauge", False, "broken_metric_success_percent"),
    ("test.metric.no_unit", "", "gauge", False, "test_metric_no_unit"),
    ("test.metric.spaces", "   \t  ", "gauge", False, "test_metric_spaces"),
    ("unsupported.metric.temperature", "°F", "gauge", False, "unsupported_metric_temperature_F"),
    ("unsupported.metric.weird", "+=.:,!* & #", "gauge", False, "unsupported_metric_weird"),
    ("unsupported.metric.redundant", "__test $/°C", "gauge", False, "unsupported_metric_redundant_test_per_C"),
    ("active_directory.ds.replication.network.io", "By", "sum", True, "active_directory_ds_replication_network_io_bytes_total"),  # noqa: E501
    ("active_directory.ds.replication.object.rate", "{objects}/s", "gauge", False, "active_directory_ds_replication_object_rate_per_second"),  # noqa: E501
    ("apache.requests", "1", "sum", True, "apache_requests_total"),
    ("bigip.virtual_server.request.count", "{requests}", "sum", True, "bigip_virtual_server_request_count_total"),
    ("system.disk.operation_time", "s", "sum", True, "system_disk_operation_time_seconds_total"),
    ("system.cpu.load_average.15m", "1", "gauge", False, "system_cpu_load_average_15m_ratio"),
    ("mongodbatlas.process.journaling.data_files", "MiBy", "gauge", False, "mongodbatlas_process_journaling_data_files_mebibytes"),  # noqa: E501
    ("mongodbatlas.process.network.io", "By/s", "gauge", False, "mongodbatlas_process_network_io_bytes_per_second"),
    ("mongodbatlas.process.oplog.rate", "GiBy/h", "gauge", False, "mongodbatlas_process_oplog_rate_gibibytes_per_hour"),
    ("mongodbatlas.process.db.query_targeting.scanned_per_returned", "{scanned}/{returned}", "gauge", False, "mongodbatlas_process_db_query_targeting_scanned_per_returned"),  # noqa: E501
    ("nginx.requests", "requests", "gauge", False, "nginx_requests"),
    ("redis.latest_fork", "us", "gauge", False, "redis_latest_fork_microseconds"),
    ("3.14 digits", "", "gauge", False, "_3_14_digits"),
    ("envoy__rule_engine_zlib_buf_error", "", "gauge", False, "envoy_rule_engine_zlib_buf_error"),
    (":foo::bar", "", "gauge", False, "foo_bar"),
    (":foo::bar", "", "sum", True, "foo_bar_total"),
]  # fmt: skip

# what mailsvc/instruments.py creates today (name, unit, OTLP kind, monotonic) and its Prometheus family
MAILSVC: list[tuple[str, str, MetricKind, bool, str]] = [
    ("mail.commands.consumed", "{command}", "sum", True, "mail_commands_consumed_total"),
    ("mail.deliveries.accepted", "{delivery}", "sum", True, "mail_deliveries_accepted_total"),
    ("mail.attempts", "{attempt}", "sum", True, "mail_attempts_total"),
    ("mail.attempt.duration", "s", "histogram", False, "mail_attempt_duration_seconds"),
    ("mail.attempts.ambiguous", "{attempt}", "sum", True, "mail_attempts_ambiguous_total"),
    ("mail.deliveries.finished", "{delivery}", "sum", True, "mail_deliveries_finished_total"),
    ("mail.retention.deleted", "{row}", "sum", True, "mail_retention_deleted_total"),
    ("http.server.request.duration", "s", "histogram", False, "http_server_request_duration_seconds"),
    ("mail.stream.lag", "{entry}", "gauge", False, "mail_stream_lag"),
    ("mail.queue.due", "{delivery}", "gauge", False, "mail_queue_due"),
]


@pytest.mark.parametrize(("name", "unit", "kind", "monotonic", "expected"), UPSTREAM + MAILSVC)
def test_prometheus_name(name: str, unit: str, kind: MetricKind, monotonic: bool, expected: str) -> None:
    assert prometheus_name(name, unit, kind, monotonic=monotonic) == expected


def test_a_non_monotonic_sum_is_a_gauge_without_total() -> None:
    assert prometheus_name("mail.workers.busy", "{worker}", "sum", monotonic=False) == "mail_workers_busy"


def test_namespace_is_prefixed() -> None:
    assert prometheus_name("test", "", "gauge", namespace="space") == "space_test"
    assert prometheus_name("#test", "", "gauge", namespace="space") == "space_test"
    assert (
        prometheus_name("network.io", "By", "sum", monotonic=True, namespace="system")
        == "system_network_io_bytes_total"
    )


def test_series_of_a_histogram_are_bucket_sum_and_count() -> None:
    assert prometheus_series("mail.attempt.duration", "s", "histogram") == {
        "mail_attempt_duration_seconds_bucket",
        "mail_attempt_duration_seconds_sum",
        "mail_attempt_duration_seconds_count",
    }
    assert prometheus_series("mail.attempts", "{attempt}", "sum", monotonic=True) == {"mail_attempts_total"}


def test_clean_up_string() -> None:
    assert clean("") == ""
    assert clean("a b") == "a_b"
    assert clean("hello, world!") == "hello_world"
    assert clean("$1000") == "1000"
    assert clean("*+$^=)") == ""


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("http.route", "http_route"),
        ("http.response.status_code", "http_response_status_code"),
        ("outcome", "outcome"),
        ("0key", "key_0key"),
    ],
)
def test_attribute_keys_become_label_names(key: str, label: str) -> None:
    assert prometheus_label(key) == label
