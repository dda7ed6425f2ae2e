"""The models the operator serves: each loaded once, verified, and shared by every policy.

A model is the packaged default (or ``QSCALE_DEFAULT_MODEL``), or an artifact published to a
ConfigMap by ``qscale model publish`` (:func:`publish_manifest`): its three files in
``binaryData``, under 1 MiB in all, pinned by the policy's ``spec.model.sha256`` -- the sha256
of the artifact's ``manifest.json``, which itself records the sha256 of both weight files and
the feature spec hash, so the pin covers everything that runs. Loading goes through
:func:`qscale.policy.artifact.load_policy`, which refuses a model of another ``SPEC_HASH`` or
with a file that does not match its manifest, with one line; that line becomes the policy's
``ModelReady=False`` message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qscale.operator.kube import ApiError, Kube
from qscale.policy.artifact import MANIFEST, MODEL_FILE, STATE_DICT_FILE, ArtifactError, load_policy

__all__ = [
    "CONFIGMAP_LIMIT",
    "Model",
    "ModelError",
    "ModelRegistry",
    "artifact_configmap",
    "load_dir",
    "manifest_digest",
]

CONFIGMAP_LIMIT = 1024 * 1024
"""Kubernetes refuses ConfigMaps over 1 MiB."""
FILES = (MANIFEST, MODEL_FILE, STATE_DICT_FILE)
SHA_ANNOTATION = "qscale.io/sha256"
MODEL_LABEL = "qscale.io/model"


class ModelError(Exception):
    """A model that cannot be served; one line (it becomes a condition message)."""


@dataclass(frozen=True)
class Model:
    name: str
    """``default`` or the ConfigMap's name."""
    digest: str
    """sha256 of its manifest.json."""
    spec_hash: str
    module: Callable[[torch.Tensor], torch.Tensor]
    manifest: Mapping[str, Any]

    @property
    def serving(self) -> Mapping[str, Any] | None:
        """The settings it was trained under (``{"interval_s", "shield", ...}``), if recorded."""
        s = self.manifest.get("serving")
        return s if isinstance(s, Mapping) else None


def manifest_digest(path: Path) -> str:
    return hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()


def load_dir(path: Path, name: str, source: str = "") -> Model:
    """Load and verify the model in ``path``; errors name ``source`` (e.g. the ConfigMap it
    came from) instead of the directory when given."""
    try:
        loaded = load_policy(path)
    except ArtifactError as e:
        msg = str(e)
        if source:
            msg = msg.replace(f"{path}/", f"{source}: ").replace(str(path), source)
        raise ModelError(msg) from None
    return Model(
        name=name,
        digest=manifest_digest(path),
        spec_hash=str(loaded.manifest.get("spec_hash", "")),
        module=loaded.module,
        manifest=loaded.manifest,
    )


def artifact_configmap(path: Path, name: str, namespace: str) -> tuple[dict[str, Any], str]:
    """The ConfigMap holding the artifact at ``path`` and its pin; raises :class:`ModelError`."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(f"{path}: not a model directory (missing {', '.join(missing)})")
    blobs = {f: (path / f).read_bytes() for f in FILES}
    size = sum(len(base64.b64encode(b)) for b in blobs.values())
    if size > CONFIGMAP_LIMIT - 4096:
        raise ModelError(f"{path}: {size} bytes encoded, over the ConfigMap limit of 1 MiB")
    digest = hashlib.sha256(blobs[MANIFEST]).hexdigest()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MODEL_LABEL: "true"},
            "annotations": {SHA_ANNOTATION: digest},
        },
        "binaryData": {f: base64.b64encode(b).decode() for f, b in blobs.items()},
    }
    return cm, digest


def _from_configmap(cm: Mapping[str, Any], name: str, pin: str) -> Model:
    data = cm.get("binaryData") or {}
    text = cm.get("data") or {}
    blobs: dict[str, bytes] = {}
    for f in FILES:
        if f in data:
            try:
                blobs[f] = base64.b64decode(data[f], validate=True)
            except ValueError:
                raise ModelError(f"ConfigMap {name}: {f} is not valid base64") from None
        elif f in text:
            blobs[f] = text[f].encode()
        else:
            raise ModelError(
                f"ConfigMap {name}: missing {f} (publish it with `qscale model publish`)"
            )
    if sum(len(b) for b in blobs.values()) > CONFIGMAP_LIMIT:
        raise ModelError(f"ConfigMap {name}: over 1 MiB")
    digest = hashlib.sha256(blobs[MANIFEST]).hexdigest()
    if digest != pin:
        raise ModelError(
            f"ConfigMap {name}: sha256 mismatch: spec.model.sha256 is {pin[:12]}..., "
            f"the ConfigMap holds {digest[:12]}..."
        )
    tmp = Path(tempfile.mkdtemp(prefix="qscale-model-"))
    try:
        for f, b in blobs.items():
            (tmp / f).write_bytes(b)
        return load_dir(tmp, name, f"ConfigMap {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ModelRegistry:
    """Models by reference, each loaded once; ConfigMaps re-read every ``refresh_s``."""

    def __init__(self, default_path: Path, refresh_s: float = 30.0) -> None:
        self.default_path = default_path
        self.refresh_s = refresh_s
        self._default: Model | ModelError | None = None
        self._by_digest: dict[str, Model] = {}
        self._cms: dict[tuple[str, str, str], tuple[float, str, Model | ModelError]] = {}
        """``(ns, name, pin) -> (fetched at, resourceVersion, result)``."""

    def default(self) -> Model | ModelError:
        if self._default is None:
            if not (self.default_path / MANIFEST).is_file():
                self._default = ModelError(
                    f"{self.default_path}: no default model "
                    "(set QSCALE_DEFAULT_MODEL or use spec.model)"
                )
            else:
                try:
                    m = load_dir(self.default_path, "default")
                    self._default = self._by_digest.setdefault(m.digest, m)
                except ModelError as e:
                    self._default = e
        return self._default

    def loaded(self) -> list[Model]:
        return list(self._by_digest.values())

    def cached(self, namespace: str, name: str, pin: str) -> Model | ModelError | None:
        hit = self._cms.get((namespace, name, pin))
        return hit[2] if hit else None

    def due(self, namespace: str, name: str, pin: str, now: float | None = None) -> bool:
        hit = self._cms.get((namespace, name, pin))
        return hit is None or (now or time.monotonic()) - hit[0] >= self.refresh_s

    def put(
        self, namespace: str, name: str, pin: str, cm: Mapping[str, Any] | None, error: str = ""
    ) -> Model | ModelError:
        """Record a fetched ConfigMap (``None``: not found / unreadable, with ``error``)."""
        key = (namespace, name, pin)
        rv = ((cm or {}).get("metadata") or {}).get("resourceVersion", "")
        old = self._cms.get(key)
        if cm is not None and old is not None and old[1] == rv:
            result = old[2]
        elif cm is None:
            result = ModelError(error or f"ConfigMap {name} not found")
        else:
            try:
                m = _from_configmap(cm, name, pin)
                result = self._by_digest.setdefault(m.digest, m)
            except ModelError as e:
                result = e
        self._cms[key] = (time.monotonic(), rv, result)
        return result

    def lookup(self, namespace: str, configmap: str, pin: str) -> tuple[Model | None, str]:
        """The model a policy names (``configmap`` empty: the default), or why there is none."""
        got = self.default() if not configmap else self.cached(namespace, configmap, pin)
        if isinstance(got, Model):
            return got, ""
        return None, str(got) if got is not None else f"ConfigMap {configmap} not read yet"

    async def refresh(self, kube: Kube, refs: Iterable[tuple[str, str, str]]) -> None:
        """Re-read the ConfigMaps ``(namespace, name, pin)`` that are due, all at once. With
        the API down, a verified model keeps being served."""

        async def fetch(ns: str, name: str, pin: str) -> None:
            try:
                cm = await kube.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
                self.put(ns, name, pin, cm)
            except ApiError as e:
                if e.status == 0 and isinstance(self.cached(ns, name, pin), Model):
                    return
                self.put(ns, name, pin, None, f"ConfigMap {name}: {e}" if e.status != 404 else "")

        await asyncio.gather(*(fetch(*k) for k in refs if self.due(*k)))


def describe(model: Model) -> dict[str, str]:
    return {"name": model.name, "sha256": model.digest, "specHash": model.spec_hash}


def manifest_json(model: Model) -> str:
    return json.dumps(model.manifest, sort_keys=True)
