"""Turn a config dataclass into argparse options, so a CLI never restates the defaults.

The dataclass stays the one place where a hyperparameter, its type, its default and its
documentation live (CleanRL's ``Args`` + ``tyro.cli``, without the dependency). Each field
becomes ``--field-name VALUE``; its docstring (the string literal under the field) becomes the
help text. Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--flag/--no-flag``),
``tuple[int, ...]`` (a comma list, ``--hidden-sizes 256,256``), ``list[str]`` (one or more
values) and ``X | None`` of those (the word ``none`` gives ``None``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["add_dataclass_args", "dataclass_from_args", "field_docs"]

T = TypeVar("T")

_NONE_WORDS = frozenset({"none", "null"})


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` read from the class source (empty if the source is unavailable)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(kind: type, optional: bool) -> Callable[[str], Any]:
    names = {int: "integer", float: "number", str: "string"}

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an' if kind is int else 'a'} {names[kind]}"
                f"{' or none' if optional else ''}, got {text!r}"
            ) from None

    parse.__name__ = names[kind]
    return parse


def _int_tuple(optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> tuple[int, ...] | None:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            values = tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers such as 128,128, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
        return values

    parse.__name__ = "integer list"
    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, defaults: Any | None = None
) -> None:
    """Add one option per field of dataclass ``cls``; ``defaults`` (an instance) overrides the
    class defaults, e.g. the config stored in a checkpoint being resumed."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        tp, optional = _unwrap_optional(hints[f.name])
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # argparse %-formats help text: a literal "%" in a docstring must not reach it bare.
        help_text = f"{help_text} (default: {shown})".strip().replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif tp in (int, float, str):
            parser.add_argument(
                flag, type=_scalar(tp, optional), metavar=tp.__name__.upper(), **kwargs
            )
        elif origin is tuple and args and args[0] is int:
            parser.add_argument(flag, type=_int_tuple(optional), metavar="N,N,...", **kwargs)
        elif origin is list and args and args[0] is str:
            parser.add_argument(flag, nargs="+", type=str, metavar="VALUE", **kwargs)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field type {tp!r}")


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options (ignores options that are not fields)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})
