"""The dev harness: what tests, benchmarks and ``make demo`` run qscale on, never serving code.

* :mod:`qscale.dev.cluster` - a local control plane (kwokctl binary runtime: real
  kube-apiserver, kube-controller-manager, scheduler; kwok plays the kubelets);
* :mod:`qscale.dev.prom` - a real Prometheus on loopback;
* :mod:`qscale.dev.fetch` - both of those downloaded for ``make demo``, pinned by sha256;
* :mod:`qscale.dev.operator` - the CRD/RBAC install, ServiceAccount kubeconfigs, the operator
  as a subprocess;
* :mod:`qscale.dev.hpa_conformance` - :mod:`qscale.hpa` against the real HPA controller.

Nothing in the core, the simulator, the policy or the operator imports this package (an
import-linter contract in ``pyproject.toml`` holds it).
"""
