"""Shared fixtures: torch threads, CUDA gating, and the real local control plane / Prometheus.

Cluster tests (``@pytest.mark.cluster``) run against a real kube-apiserver, controller-manager
and scheduler (kwok plays the kubelets; see ``qscale.dev.cluster``). Where the binaries cannot be
had they skip with one line saying how to get them -- except under ``QSCALE_REQUIRE_CLUSTER=1``
(set by ``.ci/run``), where a skipped or missing cluster test fails the run.
"""

from __future__ import annotations

import os
import uuid

import pytest
import torch

REQUIRE_CLUSTER = os.environ.get("QSCALE_REQUIRE_CLUSTER") == "1"

# The suite never downloads anything (qscale.dev.fetch refuses while this is set, also in the
# subprocesses tests start); the fetch tests serve their files on loopback and lift it.
os.environ["QSCALE_NO_FETCH"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # two cores: one thread per xdist worker (make test runs two), both when run alone
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


_cluster_outcomes = {"passed": 0, "skipped": 0, "failed": 0}


def pytest_runtest_logreport(report):
    if "cluster" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _cluster_outcomes[report.outcome] = _cluster_outcomes.get(report.outcome, 0) + 1


def pytest_sessionfinish(session, exitstatus):
    if not REQUIRE_CLUSTER or session.config.option.collectonly:
        return
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller sees every worker's reports and decides
    if getattr(session.config.option, "markexpr", "") or session.config.option.keyword:
        return  # a deliberate subset: nothing to require
    ran = _cluster_outcomes["passed"] + _cluster_outcomes["failed"]
    if _cluster_outcomes["skipped"] or ran == 0:
        print(
            f"\nQSCALE_REQUIRE_CLUSTER=1: {_cluster_outcomes['skipped']} cluster test(s) skipped, "
            f"{ran} ran: the control-plane tests must run here"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _unavailable(reason: str):
    if REQUIRE_CLUSTER:
        pytest.fail(f"QSCALE_REQUIRE_CLUSTER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def k8s_bin():
    from qscale.dev.cluster import ClusterUnavailable, find_k8s_bin

    try:
        return find_k8s_bin()
    except ClusterUnavailable as e:
        _unavailable(str(e))


@pytest.fixture(scope="session")
def cluster(k8s_bin):
    """One local control plane for the whole session (metrics-server, delayed-ready pods)."""
    from qscale.dev.cluster import ClusterOptions, ClusterUnavailable, start_cluster

    try:
        c = start_cluster(ClusterOptions(metrics_server=True, nodes=4), bin_dir=k8s_bin)
    except ClusterUnavailable as e:
        _unavailable(str(e))
    try:
        yield c
    finally:
        c.delete()


@pytest.fixture
def namespace(cluster):
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    from qscale.dev.cluster import namespace_manifest

    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.apply(namespace_manifest(name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def prometheus_bin():
    from qscale.dev.prom import PrometheusUnavailable, find_prometheus

    try:
        return find_prometheus()
    except PrometheusUnavailable as e:
        _unavailable(str(e))


@pytest.fixture
def start_prometheus(prometheus_bin):
    """Factory: ``start_prometheus({"job": ["127.0.0.1:port"]}, interval_s=1)``; all are closed
    after the test."""
    from qscale.dev.prom import LocalPrometheus

    started = []

    def start(jobs, interval_s: float = 1.0):
        p = LocalPrometheus(jobs=jobs, scrape_interval_s=interval_s, binary=prometheus_bin)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.close()
