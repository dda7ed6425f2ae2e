"""``qscale operator`` and ``qscale model publish``.

User errors end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["model_main", "operator_main"]


def operator_main(argv: Sequence[str]) -> int:
    from qscale.operator.settings import Settings, SettingsError

    ap = argparse.ArgumentParser(
        prog="qscale operator",
        description="Run the qscale operator (kopf) against the cluster of the in-cluster "
        "ServiceAccount or the kubeconfig ($KUBECONFIG, ~/.kube/config).",
        epilog="Settings (environment variables):\n" + Settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    args = ap.parse_args(list(argv))
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        s = Settings.from_env()
    except SettingsError as e:
        print(f"qscale operator: error: {e}", file=sys.stderr)
        return 2
    level = getattr(logging, s.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf's own logs one level quieter (INFO even when the operator logs DEBUG).
    logging.getLogger("kopf").setLevel(logging.INFO if level <= logging.DEBUG else logging.WARNING)
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from qscale.operator.kube import keep_client_package_out

    if keep_client_package_out():
        logging.getLogger("qscale.operator").info(
            "in a cluster: the kubernetes client package is not loaded (not needed, 18 MB)"
        )
    import kopf

    import qscale.operator.handlers  # noqa: F401  (registers the handlers)

    liveness = f"http://{s.health_address}:{s.health_port}/healthz" if s.health_port else None
    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=True,
            clusterwide=not s.namespaces,
            namespaces=list(s.namespaces),
            liveness_endpoint=liveness,
        )
    return 0


def model_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="qscale model", description="Manage model artifacts in a cluster."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    pub = sub.add_parser("publish", help="create or update the ConfigMap holding a model artifact")
    pub.add_argument("dir", help="model directory (model.pt, state_dict.pt, manifest.json)")
    pub.add_argument("--name", required=True, help="ConfigMap name")
    pub.add_argument(
        "--namespace", "-n", required=True, help="namespace of the policies that use it"
    )
    pub.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    args = ap.parse_args(list(argv))
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    from qscale.operator.kube import ApiError
    from qscale.operator.models import ModelError

    try:
        digest = asyncio.run(_publish(Path(args.dir), args.name, args.namespace))
    except (ModelError, ApiError, OSError) as e:
        print(f"qscale model publish: error: {e}", file=sys.stderr)
        return 2
    print(f"published {args.dir} as ConfigMap {args.namespace}/{args.name}; sha256 {digest}")
    print("use it in an AutoscalePolicy with:")
    print(f"  model:\n    configMapRef: {{name: {args.name}}}\n    sha256: {digest}")
    return 0


async def _publish(path: Path, name: str, namespace: str) -> str:
    from qscale.operator.kube import ApiError, Kube, load_connection
    from qscale.operator.models import ModelError, artifact_configmap, load_dir

    load_dir(path, name)  # refuse what the operator would refuse (spec hash, file hashes)
    if not path.is_dir():
        raise ModelError(f"{path}: no such directory")
    cm, digest = artifact_configmap(path, name, namespace)
    kube = Kube(load_connection())
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    try:
        try:
            old = await kube.get(f"{base}/{name}")
        except ApiError as e:
            if e.status != 404:
                raise
            await kube.post(base, cm)
        else:
            cm["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            await kube.put(f"{base}/{name}", cm)
    finally:
        await kube.close()
    return digest
