"""The local control plane and Prometheus the other cluster tests stand on."""

from __future__ import annotations

import json

import pytest

from qscale.dev.cluster import (
    LOOPBACK,
    USAGE_CPU_ANNOTATION,
    deployment_manifest,
    is_loopback,
    wait_for,
)

pytestmark = pytest.mark.cluster


def _ready(cluster, ns, name):
    out = cluster.kubectl("get", "deploy", name, "-n", ns, "-o", "json").stdout
    return json.loads(out)["status"].get("readyReplicas", 0)


def test_nodes_and_pods_are_on_loopback(cluster, namespace):
    cluster.apply(deployment_manifest("web", namespace, replicas=3))
    wait_for(lambda: _ready(cluster, namespace, "web") == 3, 60, what="3 ready pods")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    addrs = [
        a["address"] for n in nodes for a in n["status"]["addresses"] if a["type"] == "InternalIP"
    ]
    assert len(addrs) == len(nodes) > 1 and set(addrs) == {LOOPBACK}
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(pods) == 3 and all(p["status"]["podIP"].startswith("127.") for p in pods)
    assert cluster.dialled_off_host() == []
    # every component listens on loopback only (kwokctl's default is every interface)
    listening = cluster.listening()
    assert {"etcd", "kube-apiserver", "kwok-controller"} <= set(listening), listening
    off = {c: [a for a in addrs if not is_loopback(a)] for c, addrs in listening.items()}
    assert not any(off.values()), off


def test_start_up_delay_is_played_by_the_control_plane(cluster, namespace):
    cluster.apply(deployment_manifest("slow", namespace, replicas=1, ready_delay_s=6))
    wait_for(
        lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip(),
        30,
        what="a pod",
    )
    assert _ready(cluster, namespace, "slow") == 0  # still starting
    wait_for(lambda: _ready(cluster, namespace, "slow") == 1, 60, what="the pod to turn Ready")


def test_pod_cpu_reaches_the_metrics_api(cluster, namespace):
    n = 8
    cluster.apply(
        deployment_manifest(
            "busy", namespace, replicas=n, annotations={USAGE_CPU_ANNOTATION: "250m"}
        )
    )
    wait_for(lambda: _ready(cluster, namespace, "busy") == n, 60, what=f"{n} ready pods")

    def in_band(c: str) -> bool:
        return c.endswith("n") and 240e6 <= int(c[:-1]) <= 260e6

    last: dict[str, str] = {}

    def usage():
        out = cluster.kubectl(
            "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", check=False
        )
        if out.returncode != 0:
            return None
        items = json.loads(out.stdout)["items"]
        last.clear()
        last.update({i["metadata"]["name"]: i["containers"][0]["usage"]["cpu"] for i in items})
        # a pod's first sample can be a rate over a part-window (seen once as out of band
        # on a loaded machine); every pod must settle at what its annotation says
        return len(last) == n and all(in_band(c) for c in last.values())

    try:
        wait_for(usage, 120, interval_s=2, what=f"the CPU of all {n} pods at 250m")
    except TimeoutError as e:
        raise AssertionError(f"{e}: last seen {last}") from None
    # ... from more than one fake node: all are at 127.0.0.1, where kwok listens
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    assert len({p["spec"]["nodeName"] for p in pods["items"]}) > 1


def test_prometheus_scrapes_a_loopback_exporter(start_prometheus):
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from qscale.dev.prom import free_port

    reg = CollectorRegistry()
    Gauge("qscale_probe", "a probe", registry=reg).set(42)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    try:
        prom = start_prometheus({"probe": [f"127.0.0.1:{port}"]}, interval_s=1)
        res = prom.wait_for_series("qscale_probe", wait_s=30)
        assert float(res[0]["value"][1]) == 42.0
    finally:
        server.shutdown()
