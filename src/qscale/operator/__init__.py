"""The Kubernetes operator: AutoscalePolicies served by the DQN, bounded by the shield.

``qscale operator`` runs kopf (:mod:`~qscale.operator.handlers`: a record of each policy and
start-up/probe handlers) and one loop (:mod:`~qscale.operator.app`) that runs the batched tick
(:mod:`~qscale.operator.tick`): Prometheus (:mod:`~qscale.operator.prom`) -> Signals ->
:func:`qscale.decision.decide` -> the writer (:mod:`~qscale.operator.writer`, the only code that
writes replica counts) -> status (:mod:`~qscale.operator.status`) and Events. Settings come
from ``QSCALE_*`` variables (:mod:`~qscale.operator.settings`).
"""
