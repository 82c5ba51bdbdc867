"""Plugin discovery: a typed facade over pluggy's plugin manager.

Plugin modules are found through the ``rlgen`` entry point group (stdlib importlib.metadata,
the same source pluggy's ``load_setuptools_entrypoints`` reads). We iterate the entry points
ourselves instead of calling that helper because it stops at the first module that fails to
import, and ``rlgen plugins`` must list such a module with its error instead of breaking.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .interfaces import AdvantageCombiner, Callback, Plugin, RewardProvider, Sampler, Trainer
from .reward import GRANULARITIES

ENTRY_POINT_GROUP = "rlgen"
#: set to 1 to load no entry-point plugins at all (plugins passed explicitly still load)
ENV_DISABLE_AUTOLOAD = "RLGEN_DISABLE_PLUGIN_AUTOLOAD"
#: comma-separated entry point names or plugin names to block
ENV_BLOCK = "RLGEN_BLOCK_PLUGINS"
#: comma-separated importable module names to register as plugins (like PYTEST_PLUGINS)
ENV_EXTRA = "RLGEN_PLUGINS"

#: plugin kind -> (registration hook, base class)
KINDS: dict[str, tuple[str, type[Plugin]]] = {
    "reward": ("rlgen_reward_providers", RewardProvider),
    "advantage": ("rlgen_advantage_combiners", AdvantageCombiner),
    "sampler": ("rlgen_samplers", Sampler),
    "trainer": ("rlgen_trainers", Trainer),
    "callback": ("rlgen_callbacks", Callback),
}


@dataclass
class ModuleInfo:
    """One plugin module (entry point or explicitly registered)."""

    name: str
    value: str
    distribution: str
    version: str
    status: str = "ok"  # ok | error | blocked
    error: str | None = None


@dataclass
class PluginInfo:
    """One plugin class as ``rlgen plugins`` shows it."""

    kind: str
    name: str
    description: str
    distribution: str
    version: str
    module: str
    granularity: str | None = None
    status: str = "ok"  # ok | unavailable | error | blocked
    error: str | None = None
    cls: type[Plugin] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "cls"}


class Registry:
    """Every plugin the installed distributions offer, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, modules: list[ModuleInfo]) -> None:
        self.pm = pm
        self.modules = modules
        self.infos: list[PluginInfo] = []
        self.duplicates: list[str] = []
        self.rewards: dict[str, type[RewardProvider]] = {}
        self.advantages: dict[str, type[AdvantageCombiner]] = {}
        self.samplers: dict[str, type[Sampler]] = {}
        self.trainers: dict[str, type[Trainer]] = {}
        self.callbacks: dict[str, type[Callback]] = {}
        self._collect()

    # -- collection -----------------------------------------------------------------------

    def _module_info(self, plugin_name: str) -> ModuleInfo:
        for m in self.modules:
            if m.name == plugin_name:
                return m
        return ModuleInfo(name=plugin_name, value=plugin_name, distribution="(registered in code)", version="")

    def _collect(self) -> None:
        blocked = _blocked_names()
        tables: dict[str, dict[str, Any]] = {
            "reward": self.rewards,
            "advantage": self.advantages,
            "sampler": self.samplers,
            "trainer": self.trainers,
            "callback": self.callbacks,
        }
        owners: dict[tuple[str, str], PluginInfo] = {}
        for kind, (hook_name, base) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # call each implementation on its own so classes can be traced to their distribution
            for impl in hook.get_hookimpls():
                mod = self._module_info(impl.plugin_name)
                try:
                    classes = list(impl.function() or ())
                except Exception as exc:  # a broken plugin must not break the listing
                    self.infos.append(
                        PluginInfo(kind, f"<{impl.plugin_name}>", "", mod.distribution, mod.version, mod.value,
                                   status="error", error=f"{hook_name}() raised {exc!r}")
                    )
                    continue
                for cls in classes:
                    info = self._describe(kind, base, cls, mod)
                    if info.name in blocked:
                        info.status, info.error = "blocked", f"blocked by {ENV_BLOCK}"
                    key = (kind, info.name)
                    if info.status in ("ok", "unavailable") and key in owners:
                        first = owners[key]
                        msg = (
                            f"two plugins claim the {kind} name '{info.name}': {first.module} from "
                            f"{first.distribution} {first.version} and {info.module} from {info.distribution} {info.version}"
                        )
                        self.duplicates.append(msg)
                        info.status, info.error = "error", msg
                    elif info.status in ("ok", "unavailable"):
                        owners[key] = info
                        tables[kind][info.name] = cls
                    self.infos.append(info)

    @staticmethod
    def _describe(kind: str, base: type[Plugin], cls: Any, mod: ModuleInfo) -> PluginInfo:
        name = getattr(cls, "name", None)
        info = PluginInfo(
            kind=kind,
            name=name if isinstance(name, str) else f"<{getattr(cls, '__name__', cls)!s}>",
            description=str(getattr(cls, "description", "") or ""),
            distribution=mod.distribution,
            version=mod.version,
            module=mod.value,
            cls=cls if isinstance(cls, type) else None,
        )
        problem = None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            problem = f"{cls!r} is not a subclass of rlgen.{base.__name__}"
        elif not isinstance(name, str) or not name:
            problem = f"{cls.__qualname__} has no 'name'"
        elif kind == "reward":
            info.granularity = getattr(cls, "granularity", None)
            if info.granularity not in GRANULARITIES:
                problem = f"granularity must be one of {GRANULARITIES}, got {info.granularity!r}"
        if problem:
            info.status, info.error = "error", problem
        elif (reason := cls.unavailable_reason()) is not None:
            info.status, info.error = "unavailable", reason
        return info

    # -- lookup ---------------------------------------------------------------------------

    def table(self, kind: str) -> dict[str, type[Plugin]]:
        """Plugins of one kind by name; ``kind`` is one of :data:`KINDS` (singular, e.g. ``"reward"``)."""
        tables = {"reward": self.rewards, "advantage": self.advantages, "sampler": self.samplers,
                  "trainer": self.trainers, "callback": self.callbacks}
        if kind not in tables:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(tables)}")
        return tables[kind]  # type: ignore[return-value]

    def get(self, kind: str, name: str) -> type[Plugin]:
        """The class of plugin ``name``; PluginError listing the installed ones if unknown or unusable."""
        table = self.table(kind)
        if name not in table:
            for info in self.infos:
                if info.kind == kind and info.name == name and info.error:
                    raise PluginError(f"{kind} plugin '{name}' cannot be used: {info.error}")
            for mod in self.modules:
                if mod.status == "error":
                    broken = f" (note: plugin module {mod.value} from {mod.distribution} failed to import: {mod.error})"
                    break
            else:
                broken = ""
            installed = ", ".join(sorted(table)) or "none"
            raise PluginError(f"unknown {kind} plugin '{name}'; installed: {installed}{broken}")
        cls = table[name]
        reason = cls.unavailable_reason()
        if reason:
            raise PluginError(f"{kind} plugin '{name}' is unavailable: {reason}")
        return cls

    def check(self) -> None:
        """Raise if the installation is ambiguous (two plugins with one name)."""
        if self.duplicates:
            raise PluginError("; ".join(self.duplicates))

    def resolve_model(self, spec: str, cache_dir: Path) -> str:
        """Local folder for ``builtin:NAME`` (through plugins); any other spec is returned as is."""
        if not spec.startswith("builtin:"):
            return spec
        name = spec.split(":", 1)[1]
        path = self.pm.hook.rlgen_builtin_model(name=name, cache_dir=Path(cache_dir))
        if path is None:
            raise ConfigError(f"no installed plugin provides the model '{spec}' (is rlgen-plugins installed?)")
        return str(path)

    def resolve_dataset(self, spec: str, split: str, cache_dir: Path) -> Any:
        """The :class:`rlgen.data.BuiltinDataset` a plugin provides for ``builtin:NAME``."""
        name = spec.split(":", 1)[1]
        found = self.pm.hook.rlgen_builtin_dataset(name=name, split=split, cache_dir=Path(cache_dir))
        if found is None:
            raise ConfigError(f"no installed plugin provides the dataset '{spec}' (is rlgen-relate installed?)")
        return found


def _blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()}


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def registry(plugins: Iterable[ModuleType | object] = (), *, autoload: bool | None = None) -> Registry:
    """Discover plugins and return a :class:`Registry`.

    Args:
        plugins: extra plugin modules or objects to register (tests, notebooks).
        autoload: load entry-point plugins; default True unless ``RLGEN_DISABLE_PLUGIN_AUTOLOAD=1``.

    Modules named in ``RLGEN_PLUGINS`` (comma-separated import names) are registered too,
    whatever ``autoload`` says.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in ("1", "true", "yes")
    modules: list[ModuleInfo] = []
    blocked = _blocked_names()
    if autoload:
        seen: set[str] = set()
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "(unknown)"
            key = f"{dist_name}:{ep.name}"
            if key in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add(key)
            info = ModuleInfo(ep.name, ep.value, dist_name, dist.version if dist is not None else "")
            modules.append(info)
            if ep.name in blocked:
                info.status, info.error = "blocked", f"blocked by {ENV_BLOCK}"
                pm.set_blocked(ep.name)
                continue
            if pm.get_plugin(ep.name) is not None:
                info.status = "error"
                info.error = f"entry point name '{ep.name}' is used by two distributions"
                continue
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:
                info.status = "error"
                info.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    for mod_name in [n.strip() for n in os.environ.get(ENV_EXTRA, "").split(",") if n.strip()]:
        info = ModuleInfo(mod_name, mod_name, f"({ENV_EXTRA})", "")
        modules.append(info)
        try:
            pm.register(importlib.import_module(mod_name), name=mod_name)
        except Exception as exc:
            info.status = "error"
            info.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    for obj in plugins:
        name = getattr(obj, "__name__", None) or f"{type(obj).__name__}@{id(obj):x}"
        if pm.get_plugin(name) is None:
            pm.register(obj, name=name)
            modules.append(ModuleInfo(name, name, "(registered in code)", ""))
    return Registry(pm, modules)
