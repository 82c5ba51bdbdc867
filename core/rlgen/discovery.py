"""Plugin discovery: a typed facade over pluggy's plugin manager.

Plugin modules are found through the ``rlgen`` entry point group (stdlib importlib.metadata,
the same source pluggy's ``load_setuptools_entrypoints`` reads). We iterate the entry points
ourselves instead of calling that helper because it stops at the first module that fails to
import, and ``rlgen plugins`` must list such a module with its error instead of breaking.
"""

from __future__ import annotations

import difflib
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
from .hookspecs import PROJECT_NAME
from .errors import ConfigError, PluginError
from .interfaces import AdvantageCombiner, Callback, Plugin, RewardProvider, Sampler, Trainer
from .reward import GRANULARITIES

ENTRY_POINT_GROUP = PROJECT_NAME
#: set to 1 to load no entry-point plugins at all (plugins passed explicitly still load)
ENV_DISABLE_AUTOLOAD = "RLGEN_DISABLE_PLUGIN_AUTOLOAD"
#: comma-separated entry point names or plugin names to block
ENV_BLOCK = "RLGEN_BLOCK_PLUGINS"
#: comma-separated importable module names to register as plugins (like PYTEST_PLUGINS)
ENV_EXTRA = "RLGEN_PLUGINS"


@dataclass(frozen=True)
class Kind:
    """One plugin kind: the config section that names it, its registration hook, its base class."""

    name: str
    hook: str
    base: type[Plugin]


#: the one table of plugin kinds; everything else that lists kinds derives from it
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("reward", "rlgen_reward_providers", RewardProvider),
        Kind("advantage", "rlgen_advantage_combiners", AdvantageCombiner),
        Kind("sampler", "rlgen_samplers", Sampler),
        Kind("trainer", "rlgen_trainers", Trainer),
        Kind("callback", "rlgen_callbacks", Callback),
    )
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
    aliases: tuple[str, ...] = ()
    status: str = "ok"  # ok | unavailable | error | blocked
    error: str | None = None
    cls: type[Plugin] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "cls"}
        out["aliases"] = list(self.aliases)
        return out


class Registry:
    """Every plugin the installed distributions offer, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, modules: list[ModuleInfo]) -> None:
        self.pm = pm
        self.modules = modules
        self.infos: list[PluginInfo] = []
        self.duplicates: list[str] = []
        self._tables: dict[str, dict[str, type[Plugin]]] = {kind: {} for kind in KINDS}
        self._collect()

    @property
    def rewards(self) -> dict[str, type[RewardProvider]]:
        return self._tables["reward"]  # type: ignore[return-value]

    @property
    def advantages(self) -> dict[str, type[AdvantageCombiner]]:
        return self._tables["advantage"]  # type: ignore[return-value]

    @property
    def samplers(self) -> dict[str, type[Sampler]]:
        return self._tables["sampler"]  # type: ignore[return-value]

    @property
    def trainers(self) -> dict[str, type[Trainer]]:
        return self._tables["trainer"]  # type: ignore[return-value]

    @property
    def callbacks(self) -> dict[str, type[Callback]]:
        return self._tables["callback"]  # type: ignore[return-value]

    # -- collection -----------------------------------------------------------------------

    def _module_info(self, plugin_name: str) -> ModuleInfo:
        for m in self.modules:
            if m.name == plugin_name:
                return m
        return ModuleInfo(name=plugin_name, value=plugin_name, distribution="(registered in code)", version="")

    def _collect(self) -> None:
        blocked = _blocked_names()
        owners: dict[tuple[str, str], PluginInfo] = {}
        for kind, spec in KINDS.items():
            hook_name, base = spec.hook, spec.base
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
                    claimed = [n for n in (info.name, *info.aliases) if (kind, n) in owners]
                    if info.status in ("ok", "unavailable") and claimed:
                        first = owners[(kind, claimed[0])]
                        msg = (
                            f"two plugins claim the {kind} name '{claimed[0]}': {first.module} from "
                            f"{first.distribution} {first.version} and {info.module} from {info.distribution} {info.version}"
                        )
                        self.duplicates.append(msg)
                        info.status, info.error = "error", msg
                    elif info.status in ("ok", "unavailable"):
                        for n in (info.name, *info.aliases):
                            owners[(kind, n)] = info
                            self._tables[kind][n] = cls
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
            aliases=tuple(a for a in getattr(cls, "aliases", ()) if isinstance(a, str) and a),
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
        """Plugins of one kind by name and alias; ``kind`` is a key of :data:`KINDS` (e.g. ``"reward"``)."""
        if kind not in self._tables:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        return self._tables[kind]

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
            raise ConfigError(f"no installed plugin provides the model '{spec}' (`rlgen plugins` lists what is installed)")
        return str(path)

    def resolve_dataset(self, spec: str, split: str, cache_dir: Path) -> Any:
        """The :class:`rlgen.data.BuiltinDataset` a plugin provides for ``builtin:NAME``."""
        name = spec.split(":", 1)[1]
        found = self.pm.hook.rlgen_builtin_dataset(name=name, split=split, cache_dir=Path(cache_dir))
        if found is None:
            raise ConfigError(f"no installed plugin provides the dataset '{spec}' (`rlgen plugins` lists what is installed)")
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
    _reject_unknown_hooks(pm, modules)
    return Registry(pm, modules)


def _reject_unknown_hooks(pm: pluggy.PluginManager, modules: list[ModuleInfo]) -> None:
    """Mark and unregister every plugin module with a ``@hookimpl`` that matches no hook spec.

    pluggy accepts such functions and never calls them (``check_pending`` would say so, once,
    for the first one); a misspelt hook name would otherwise be silently ignored.
    """
    known = list(hookspecs.documented_hooks())
    faults: dict[str, list[str]] = {}
    for name in list(pm.hook.__dict__):
        hook = getattr(pm.hook, name)
        if name.startswith("_") or not isinstance(hook, pluggy.HookCaller) or hook.has_spec():
            continue
        for impl in hook.get_hookimpls():
            if impl.optionalhook:
                continue
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; hooks: {', '.join(known)}"
            faults.setdefault(impl.plugin_name, []).append(f"@hookimpl function {name}() matches no rlgen hook{hint}")
    for plugin_name, problems in faults.items():
        info = next((m for m in modules if m.name == plugin_name), None)
        if info is None:
            info = ModuleInfo(plugin_name, plugin_name, "(registered in code)", "")
            modules.append(info)
        info.status, info.error = "error", f"{info.value}: " + "; ".join(problems)
        pm.unregister(name=plugin_name)
