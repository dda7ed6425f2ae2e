"""Batching frozen dataclasses of ``[B, ...]`` tensors: one concatenation, split and selection.

The simulator's params and state, the shield's memory, the decision's signals and the HPA's
state are all frozen dataclasses whose tensors share a leading batch dimension. Joining a few
of them into one batch (one ``decide()`` for many policies, one rollout for many seeds), taking
rows back out, or splitting a batch into rows is the same operation over every field, written
once here instead of once per class with its field list restated by hand.

Per field: a tensor is batched on dim 0; a nested dataclass is batched field by field; ``None``
stays ``None``. A class names the fields that are *not* per row (a trace bank, a static config)
in ``batch_shared``; those are taken from the first item and must be the same in all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["cat", "select", "split"]

T = TypeVar("T")


def _shared(cls: type) -> frozenset[str]:
    return frozenset(getattr(cls, "batch_shared", ()))


def _map(items: Sequence[Any], op: Callable[[list[torch.Tensor]], Any]) -> Any:
    """Apply ``op`` to the list of each batched tensor field across ``items`` (one level per
    nested dataclass); ``op`` returns one tensor, or a list of them (one per output)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return op(list(items))
    if first is None:
        return None
    if not dataclasses.is_dataclass(first):
        raise TypeError(f"cannot batch a {type(first).__name__}")
    shared = _shared(type(first))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        values = [getattr(it, f.name) for it in items]
        if f.name in shared:
            if not all(_same(values[0], v) for v in values[1:]):
                raise ValueError(f"{type(first).__name__}.{f.name} differs between the items")
            out[f.name] = values[0]
        else:
            out[f.name] = _map(values, op)
    return out


def _same(a: Any, b: Any) -> bool:
    """Whether a shared field holds the same thing in two items (a copy moved to the same
    device counts: a trace bank is copied per params set, its tensors are not)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def _build(proto: Any, values: Any, k: int | None) -> Any:
    """Rebuild ``proto``'s class from :func:`_map`'s output (``k``: which of several outputs)."""
    if isinstance(values, torch.Tensor) or values is None:
        return values
    if isinstance(values, list):
        return values[k]
    shared = _shared(type(proto))
    kwargs = {
        name: v if name in shared else _build(getattr(proto, name), v, k)
        for name, v in values.items()
    }
    return type(proto)(**kwargs)


def cat(items: Sequence[T]) -> T:
    """One batch from ``items`` (each a batch itself, often of one row)."""
    if not items:
        raise ValueError("cat() needs at least one item")
    return _build(items[0], _map(items, torch.cat), None)


def select(item: T, index: torch.Tensor | slice) -> T:
    """The rows ``index`` (indices, a bool mask or a slice) of every batched field."""
    return _build(item, _map([item], lambda ts: ts[0][index]), None)


def split(item: T) -> list[T]:
    """One item per row (each a batch of one)."""
    n = _batch_size(item)
    parts = _map([item], lambda ts: list(torch.split(ts[0], 1)))
    return [_build(item, parts, k) for k in range(n)]


def _batch_size(item: Any) -> int:
    if isinstance(item, torch.Tensor):
        return item.shape[0]
    shared = _shared(type(item))
    for f in dataclasses.fields(item):
        v = getattr(item, f.name)
        if f.name in shared or v is None:
            continue
        return _batch_size(v)
    raise ValueError(f"{type(item).__name__} has no batched field")
