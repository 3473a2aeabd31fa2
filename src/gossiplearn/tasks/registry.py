"""Resolve a task name to a factory: a built-in, or ``package.module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from gossiplearn.errors import UserError
from gossiplearn.tasks import digits, tabular
from gossiplearn.tasks.base import Task, TaskOptions

TaskFactory = Callable[[TaskOptions], Task]

BUILTIN: dict[str, TaskFactory] = {
    "digits": digits.make_task,
    "tabular": tabular.make_task,
}


def resolve(name: str) -> TaskFactory:
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(
            f"unknown task {name!r}: use one of {', '.join(BUILTIN)} or package.module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - user code may fail to import in any way
        raise UserError(
            f"cannot import task module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{module_name!r} has no callable {attr!r} (task {name!r})")
    return factory  # type: ignore[no-any-return]


def load_task(name: str, options: TaskOptions) -> Task:
    """Build the task; any failure becomes a ``UserError`` naming the task."""
    factory = resolve(name)
    try:
        task = factory(options)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"task {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise UserError(f"task {name!r} returned {type(task).__name__}, not gossiplearn Task")
    if options.need_data and len(task.train) == 0:
        raise UserError(f"task {name!r} has no training data")
    return task
