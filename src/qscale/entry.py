"""The ``qscale`` console script: the cluster commands without the simulator's imports.

``qscale operator``, ``qscale emulate``, ``qscale model`` and ``qscale demo`` run long or in small
containers, so they are dispatched here before :mod:`qscale.cli` (which imports the simulator,
its evaluation and plotting) is loaded: the operator's memory is torch, kopf and the tick, nothing
else. Every other command goes to :func:`qscale.cli.main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["operator"]:
        from qscale.operator.cli import operator_main

        return operator_main(args[1:])
    if args[:1] == ["emulate"]:
        from qscale.emulator.cli import emulate_main

        return emulate_main(args[1:])
    if args[:1] == ["demo"]:
        from qscale.demo.cli import demo_main

        return demo_main(args[1:])
    if args[:1] == ["model"]:
        from qscale.operator.cli import model_main

        return model_main(args[1:])
    from qscale.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
