"""Events by name: handlers take and return dicts keyed by name; this maps the names to components.

Gradio hands a handler `{component: value}` when its inputs are a set, and takes `{component: value}`
back; we key the same dicts by name so handlers stay plain functions of values that tests can call.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Union

from gradio.components import Component

Components = Mapping[str, Union[Component, Mapping[str, Component]]]


def _flat(named: Components) -> set:
    out = set()
    for value in named.values():
        out |= set(value.values()) if isinstance(value, Mapping) else {value}
    return out


def _kwargs(named: Components, data: dict) -> dict[str, Any]:
    # a nested mapping (the parameters panel) arrives as one dict argument
    return {name: ({k: data[c] for k, c in comp.items()} if isinstance(comp, Mapping) else data[comp])
            for name, comp in named.items()}


def _by_component(named: Mapping[str, Any], result: Mapping[str, Any] | None) -> dict:
    targets = dict(named)
    for comp in list(targets.values()):
        if isinstance(comp, Mapping):
            targets.update(comp)
    return {targets[k]: v for k, v in (result or {}).items() if k in targets and not isinstance(targets[k], Mapping)}


def handler(fn: Callable, inputs: Components, outputs: Mapping[str, Any]) -> Callable:
    """`fn(**named inputs)` returning or yielding {name: value} as a Gradio handler over components."""
    if inspect.isgeneratorfunction(fn):
        def stream(data: dict | None = None):
            for result in fn(**_kwargs(inputs, data or {})):
                yield _by_component(outputs, result)
        return stream

    def call(data: dict | None = None):
        return _by_component(outputs, fn(**_kwargs(inputs, data or {})))
    return call


def on(trigger: Callable, fn: Callable, inputs: Components | None = None, outputs: Mapping[str, Any] | None = None,
       **options: Any):
    """Wire `trigger` (e.g. `button.click`) to `fn`, inputs and outputs given by name."""
    inputs, outputs = inputs or {}, outputs or {}
    return trigger(handler(fn, inputs, outputs), inputs=_flat(inputs) or None, outputs=_flat(outputs) or None,
                   **options)
