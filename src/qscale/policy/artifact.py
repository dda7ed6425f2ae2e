"""Model artifacts: a trained Q-network in a directory that says what it is and proves it.

Layout::

    <dir>/model.pt        TorchScript (frozen, optimized for inference when that works)
    <dir>/state_dict.pt   the weights, to rebuild the network eagerly (fallback, debugging)
    <dir>/manifest.json   versions, feature spec hash, names, normalization, configs, traces,
                          evaluation table and the sha256 of both weight files

Serving (the operator) reads observations built by :mod:`qscale.features`; a model trained
against another feature spec would silently act on misread inputs, so :func:`load_policy`
refuses it, and refuses files whose hashes do not match the manifest (a partial copy, a
tampered or swapped file). While :func:`qscale.features.compute` no longer gives the golden
vector pinned for the spec hash, nothing is loaded or exported. Every refusal is an
:class:`ArtifactError` with one clear line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import qscale
from qscale import actions, features
from qscale.policy.network import QNetwork

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_FILE",
    "STATE_DICT_FILE",
    "ArtifactError",
    "LoadedPolicy",
    "export",
    "load_policy",
    "read_manifest",
    "sha256_file",
    "update_evaluation",
    "update_manifest",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
STATE_DICT_FILE = "state_dict.pt"
MANIFEST = "manifest.json"

# Numbers the optimized TorchScript may differ from the eager network by (it rewrites addmm
# into matmul + add); beyond that the optimization is not trusted and the frozen graph is kept.
_OPT_ATOL = 1e-5


class ArtifactError(Exception):
    """An artifact that cannot be used; the message is one line naming the file and the reason."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A verified policy: ``module(obs [B, F]) -> Q [B, A]`` plus its manifest."""

    module: nn.Module | torch.jit.ScriptModule
    manifest: dict[str, Any]
    kind: Literal["torchscript", "eager"]
    path: Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _script(network: QNetwork, optimize: bool) -> tuple[torch.jit.ScriptModule, dict[str, bool]]:
    """Script a CPU eval copy; freeze and optimize it when the result still matches eagerly."""
    net = copy.deepcopy(network).cpu().eval()
    with warnings.catch_warnings():
        # torch 2.x marks TorchScript deprecated; it is still the one portable, Python-free
        # format a Go/C++ or slim Python operator can load, so we keep using it deliberately.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
        info = {"frozen": False, "optimized": False}
        if not optimize:
            return scripted, info
        probe = torch.linspace(-1.0, 2.0, 64 * network.n_features).reshape(64, -1)
        with torch.no_grad():
            expected = net(probe)
        for optimized in (True, False):
            try:
                candidate = torch.jit.script(net)
                if optimized:
                    candidate = torch.jit.optimize_for_inference(torch.jit.freeze(candidate))
                else:
                    candidate = torch.jit.freeze(candidate)
                with torch.no_grad():
                    ok = torch.allclose(candidate(probe), expected, rtol=0.0, atol=_OPT_ATOL)
            except Exception:  # an optimization pass that fails on this build: try the next
                continue
            if ok:
                return candidate, {"frozen": True, "optimized": optimized}
    return scripted, info


def _jsonable(value: Any) -> Any:
    """Plain JSON types from configs and tables that may hold tensors, paths or tuples."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ArtifactError(f"cannot store a {type(value).__name__} in the manifest: {value!r}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash never leaves a half-written manifest next to good weights."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the operator may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(
    network: QNetwork,
    path: str | os.PathLike,
    *,
    train_config: Mapping[str, Any] | None = None,
    trace_files: Sequence[str | os.PathLike] = (),
    evaluation: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    optimize: bool = True,
) -> Path:
    """Write ``network`` as an artifact directory at ``path`` (created; files overwritten).

    ``serving`` records what the model was trained under and should be served with: the
    decision interval (``interval_s``) and the shield's settings (``shield``); the operator
    flags a policy whose settings differ.

    ``extra`` adds top-level manifest keys (e.g. a training summary); it cannot replace the
    keys :func:`load_policy` verifies.
    """
    mismatch = features.golden_mismatch()
    if mismatch is not None:
        raise ArtifactError(f"{path}: not exported: {mismatch}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    scripted, ts_info = _script(network, optimize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, str(out / MODEL_FILE))
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    torch.save(state, out / STATE_DICT_FILE)
    traces = [
        {"name": Path(p).stem, "path": os.fspath(p), "sha256": sha256_file(p)} for p in trace_files
    ]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "qscale_version": qscale.__version__,
        "torch_version": torch.__version__,
        "spec_hash": features.SPEC_HASH,
        "feature_names": list(features.FEATURE_NAMES),
        "action_names": list(actions.ACTION_NAMES),
        "observation_normalization": network.normalization(),
        "network": {"class": "QNetwork", **network.config()},
        "torchscript": ts_info,
        "training_config": _jsonable(dict(train_config or {})),
        "trace_files": traces,
        "evaluation": _jsonable(dict(evaluation or {})),
        "serving": _jsonable(dict(serving or {})),
        "model_sha256": sha256_file(out / MODEL_FILE),
        "state_dict_sha256": sha256_file(out / STATE_DICT_FILE),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in (extra or {}).items():
        if key in manifest:
            raise ArtifactError(f"extra manifest key {key!r} would replace a reserved key")
        manifest[key] = _jsonable(value)
    _write_json(out / MANIFEST, manifest)
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, structurally checked (hashes not verified)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing manifest (not a qscale model directory?)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath}: artifact format version {version!r}, this qscale reads {FORMAT_VERSION}"
        )
    required = ("spec_hash", "model_sha256", "state_dict_sha256", "network", "action_names")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath}: manifest lacks {', '.join(missing)}")
    return manifest


def _verify(root: Path, manifest: dict[str, Any]) -> None:
    if manifest["spec_hash"] != features.SPEC_HASH:
        raise ArtifactError(
            f"{root}: model was trained for feature spec {manifest['spec_hash']}, "
            f"this qscale computes {features.SPEC_HASH}; retrain or use a matching qscale"
        )
    mismatch = features.golden_mismatch()
    if mismatch is not None:
        raise ArtifactError(f"{root}: {mismatch}")
    if list(manifest["action_names"]) != list(actions.ACTION_NAMES):
        raise ArtifactError(
            f"{root}: model's actions {manifest['action_names']} differ from this qscale's "
            f"{list(actions.ACTION_NAMES)}"
        )
    for name, key in ((MODEL_FILE, "model_sha256"), (STATE_DICT_FILE, "state_dict_sha256")):
        f = root / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing model file")
        if sha256_file(f) != manifest[key]:
            raise ArtifactError(f"{f}: sha256 does not match the manifest (corrupt or modified)")


def _load_eager(root: Path, manifest: dict[str, Any], device: torch.device) -> QNetwork:
    cfg = manifest["network"]
    try:
        state = torch.load(root / STATE_DICT_FILE, map_location=device, weights_only=True)
        net = QNetwork(
            n_features=int(cfg["n_features"]),
            n_actions=int(cfg["n_actions"]),
            hidden_sizes=tuple(int(h) for h in cfg["hidden_sizes"]),
        )
        net.load_state_dict(state)
    except Exception as e:
        raise ArtifactError(f"{root / STATE_DICT_FILE}: cannot rebuild the network ({e})") from None
    return net.to(device).eval()


def _load_torchscript(root: Path, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(root / MODEL_FILE), map_location=device)
    return module.eval()


def _probe(module: nn.Module | torch.jit.ScriptModule, device: torch.device) -> None:
    """One forward pass of a loaded network on a batch of two zero observations; raises
    :class:`ValueError` unless it gives ``[2, N_ACTIONS]`` Q-values."""
    with torch.no_grad():
        out = module(torch.zeros(2, features.N_FEATURES, device=device))
    if tuple(out.shape) != (2, actions.N_ACTIONS):
        raise ValueError(f"network outputs shape {tuple(out.shape)}")


def load_policy(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    prefer: Literal["torchscript", "eager"] = "torchscript",
) -> LoadedPolicy:
    """Load and verify an artifact; the module maps ``[B, F]`` observations to ``[B, A]`` Q-values.

    Verification (spec hash and golden feature vector, action names, both sha256s) happens
    before anything is unpickled.
    With ``prefer="torchscript"``, a TorchScript file this torch build cannot run (another
    version, another device) falls back to the eager rebuild, with a warning.
    """
    if prefer not in ("torchscript", "eager"):
        raise ValueError(f"prefer must be 'torchscript' or 'eager', got {prefer!r}")
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such model directory")
    manifest = read_manifest(root)
    _verify(root, manifest)
    dev = torch.device(device)
    if prefer == "torchscript":
        try:
            module = _load_torchscript(root, dev)
            _probe(module, dev)
            return LoadedPolicy(module=module, manifest=manifest, kind="torchscript", path=root)
        except Exception as e:
            warnings.warn(
                f"{root / MODEL_FILE}: TorchScript unusable here ({e}); using the eager network",
                RuntimeWarning,
                stacklevel=2,
            )
    net = _load_eager(root, manifest, dev)
    try:
        _probe(net, dev)
    except ValueError as e:
        raise ArtifactError(f"{root}: {e}") from None
    return LoadedPolicy(module=net, manifest=manifest, kind="eager", path=root)


def update_evaluation(path: str | os.PathLike, table: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the manifest's ``evaluation`` with ``table``; the weight files are not touched,
    so their hashes (and the artifact's verification) stay valid. Returns the new manifest."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return update_manifest(path, {"evaluation": dict(table), "evaluated_at": stamp})


_VERIFIED = frozenset(
    {"format_version", "spec_hash", "feature_names", "action_names", "network",
     "model_sha256", "state_dict_sha256"}
)  # fmt: skip


def update_manifest(path: str | os.PathLike, entries: Mapping[str, Any]) -> dict[str, Any]:
    """Set top-level manifest ``entries`` that describe the model (its evaluation, its drift
    reference); the keys :func:`load_policy` verifies cannot be changed this way, and the
    weights are not touched. Returns the new manifest."""
    bad = sorted(set(entries) & _VERIFIED)
    if bad:
        raise ArtifactError(f"{path}: manifest keys {bad} are fixed at export")
    root = Path(path)
    manifest = read_manifest(root)
    manifest.update({k: _jsonable(v) for k, v in entries.items()})
    _write_json(root / MANIFEST, manifest)
    return manifest
