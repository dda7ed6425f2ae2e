"""The learned policy: Q-network, offline DQN training, artifacts and the rollout controller.

* :mod:`qscale.policy.network` -- ``QNetwork`` (MLP + dueling head, carries its normalization);
* :mod:`qscale.policy.train` -- ``TrainConfig``, ``train()``, ``main()`` (``qscale train``);
* :mod:`qscale.policy.replay` -- n-step windows and the device-resident replay buffer;
* :mod:`qscale.policy.artifact` -- ``export()``, ``load_policy()``, ``update_evaluation()``;
* :mod:`qscale.policy.controller` -- ``DQNController`` for :func:`qscale.simulator.rollout`;
* :mod:`qscale.policy.cli_args` -- dataclass -> argparse options.

Nothing is imported here, so that serving code importing the artifact loader does not pay for
the training stack.
"""
