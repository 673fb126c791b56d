"""Turn a dataclass config into CLI options (as sparsify does): each field becomes an option
with its default and help text, so the trainer's defaults are stated once."""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, fields
from typing import Any, Callable, get_type_hints

import typer

# Short spellings kept from earlier releases.
ALIASES = {"n_latents": ("--n",)}


def option_names(field: str, hint: Any) -> tuple[str, ...]:
    """``--field-name`` and its aliases; a yes/no field is the pair ``--name/--no-name``."""
    name = f"--{field.replace('_', '-')}"
    return (f"{name}/--no-{name[2:]}",) if hint is bool else (name, *ALIASES.get(field, ()))


def config_options(config_cls: type, skip: tuple[str, ...] = (), on_error: Callable[[Exception], None] | None = None):
    """Decorate a command taking ``cfg: config_cls``: the CLI gets one option per field (less
    ``skip``), and the command receives the built config. Invalid values go to ``on_error``."""

    hints = get_type_hints(config_cls)
    chosen = [f for f in fields(config_cls) if f.name not in skip]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "cfg"]
        extra = [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                default=typer.Option(None if f.default is MISSING else f.default, *option_names(f.name, hints[f.name]),
                                     help=f.metadata.get("help")),
            )
            for f in chosen
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in chosen}
            try:
                cfg = config_cls(**values)
            except ValueError as exc:
                if on_error is None:
                    raise
                on_error(exc)
            return command(cfg=cfg, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**{p.name: p.annotation for p in own}, **{f.name: hints[f.name] for f in chosen}}
        return wrapper

    return decorate
