"""Name -> class registries for pretraining methods and benchmark tasks.

In-tree plugins register with a decorator when their module is imported; plugins from other
packages arrive through the entry-point groups `orl_bench.methods` and `orl_bench.tasks`
(`name = "package.module:Class"`). Registering one name twice is an error naming both sources.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Iterator
from importlib import metadata
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtin_package: str):
        self.kind = kind
        self.group = group
        self._builtin_package = builtin_package
        self._entries: dict[str, type[T]] = {}
        self._sources: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            self._add(name, cls, f"{cls.__module__}.{cls.__qualname__}")
            return cls
        return decorator

    def _add(self, name: str, cls: type[T], source: str) -> None:
        if name in self._entries and self._sources[name] != source:
            raise RegistryError(f"{self.kind} '{name}' is registered twice: by {self._sources[name]} "
                                f"and by {source}")
        self._entries[name] = cls
        self._sources[name] = source
        cls.registered_name = name  # type: ignore[attr-defined]

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_package)
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            self._add(ep.name, ep.load(), f"entry point '{ep.name} = {ep.value}' of {dist}")

    @contextlib.contextmanager
    def scope(self) -> Iterator[Registry[T]]:
        """For tests: inside the block entry points are looked up again (a test may have put a
        plugin's distribution on sys.path) and `register` may add classes; after it, the registry
        is as it was before."""
        self._load()
        entries, sources = dict(self._entries), dict(self._sources)
        self._loaded = False
        try:
            yield self
        finally:
            self._entries, self._sources, self._loaded = entries, sources, True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def source(self, name: str) -> str:
        self.get(name)
        return self._sources[name]

    def get(self, name: str) -> type[T]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Valid {self.kind}s: "
                                f"{', '.join(sorted(self._entries))}")
        return self._entries[name]


METHODS: Registry = Registry("method", "orl_bench.methods", "orl_bench.methods")
TASKS: Registry = Registry("task", "orl_bench.tasks", "orl_bench.tasks")
