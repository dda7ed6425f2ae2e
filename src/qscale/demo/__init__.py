"""``qscale demo``: qscale against the real Kubernetes HPA, on the same traffic, in a local
control plane (:mod:`qscale.demo.run`); the offline evaluation where none can be had."""
