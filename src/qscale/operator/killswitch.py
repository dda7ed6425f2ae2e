"""The kill switch: every policy to the HPA rule, or to Off, within one tick, nothing deleted.

Three places engage it, all read every tick (no restart, no list or watch on ConfigMaps):

* the setting ``QSCALE_KILL_SWITCH`` (the chart's ``operator.killSwitch``), operator-wide;
* the ConfigMap ``QSCALE_KILL_SWITCH_CONFIGMAP`` (default ``qscale-kill-switch``) in the
  operator's own namespace, operator-wide: the platform team's switch, no redeploy needed;
* a ConfigMap of the same name in a policy's namespace: that namespace's team's switch.

Its ``data.mode`` is ``HPA`` (the HPA rule decides instead of the model, within the policy's
bounds and in its mode: Shadow still never writes) or ``Off`` (the policy only reports, as in
mode Off). Where several apply, the strongest wins (``Off`` over ``HPA``). Any other value
engages ``HPA`` and says so: whoever wrote it meant to stop the model. A ConfigMap that cannot
be read (anything but 404) keeps what was last read, so an API fault never releases a switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from qscale.operator.kube import ApiError, Kube
from qscale.operator.metrics import Metrics
from qscale.operator.status import Notice, OpReason

__all__ = ["MODES", "Engaged", "KillSwitch", "parse"]

MODES = ("HPA", "Off")
"""Weakest first."""


@dataclass(frozen=True)
class Engaged:
    """An engaged switch: what it does and who engaged it."""

    mode: str
    """``HPA`` or ``Off``."""
    source: str
    """Where it was engaged, for the condition and the Event."""
    note: str = ""
    """A value that was not ``HPA`` or ``Off``, read as ``HPA``."""

    @property
    def describe(self) -> str:
        what = "the HPA rule decides" if self.mode == "HPA" else "policies only report"
        note = f"; {self.note}" if self.note else ""
        return f"kill switch {self.mode} ({self.source}{note}): {what}"


def parse(value: str | None, source: str) -> Engaged | None:
    """The switch a value engages (empty, ``None`` or ``none``: none)."""
    v = (value or "").strip()
    if not v or v.lower() in ("none", "false", "0"):
        return None
    for mode in MODES:
        if v.lower() == mode.lower():
            return Engaged(mode, source)
    return Engaged("HPA", source, f"{v[:40]!r} is not HPA or Off, read as HPA")


def strongest(*switches: Engaged | None) -> Engaged | None:
    on = [s for s in switches if s is not None]
    return max(on, key=lambda s: MODES.index(s.mode)) if on else None


class KillSwitch:
    """The switches, refreshed each tick for the operator and the namespaces that are due."""

    def __init__(self, setting: str, configmap: str, home: str) -> None:
        self.configmap = configmap
        self.home = home
        self.setting = parse(setting, "operator setting QSCALE_KILL_SWITCH")
        self.read: dict[str, Engaged | None] = {}
        """Per namespace (the operator's own included), as last read."""
        self.errors = 0

    @classmethod
    def from_settings(cls, settings: Any) -> KillSwitch:
        return cls(settings.kill_switch, settings.kill_switch_configmap, settings.lease_ns())

    async def refresh(self, kube: Kube, namespaces: Iterable[str]) -> None:
        """Read the ConfigMap in the operator's namespace and in ``namespaces``, at once."""
        wanted = sorted({self.home, *namespaces})
        got = await asyncio.gather(*(self._read(kube, ns) for ns in wanted))
        for ns, (ok, value) in zip(wanted, got, strict=True):
            if ok:
                self.read[ns] = value

    async def _read(self, kube: Kube, ns: str) -> tuple[bool, Engaged | None]:
        path = f"/api/v1/namespaces/{ns}/configmaps/{self.configmap}"
        scope = "operator-wide" if ns == self.home else "namespace"
        try:
            cm = await kube.get(path)
        except ApiError as e:
            if e.status == 404:
                return True, None
            self.errors += 1
            return False, None  # keep the last reading: a fault never releases a switch
        data = (cm or {}).get("data") or {}
        return True, parse(data.get("mode"), f"{scope} ConfigMap {ns}/{self.configmap}")

    def operator_wide(self) -> Engaged | None:
        return strongest(self.setting, self.read.get(self.home))

    def for_namespace(self, ns: str) -> Engaged | None:
        """The switch a policy in ``ns`` is under, if any."""
        return strongest(self.operator_wide(), self.read.get(ns))

    @staticmethod
    def notice(r: Any) -> Notice | None:
        """For a row under ``r.kill`` (or no longer): a switch to Off makes the row mode Off;
        engaging and releasing each give their Notice once (``r.runtime.killed`` remembers)."""
        if r.kill is not None and r.kill.mode == "Off":
            r.spec = replace(r.spec, mode="Off")
        text = r.kill.describe if r.kill is not None else ""
        if text == r.runtime.killed:
            return None
        was, r.runtime.killed = r.runtime.killed, text
        if text:
            return Notice("Warning", OpReason.KILL_SWITCH.value, text)
        why = f"released: {was}; the policy runs as its spec says"
        return Notice("Normal", OpReason.KILL_SWITCH_RELEASED.value, why)

    def export(self, metrics: Metrics) -> None:
        wide = self.operator_wide()
        for mode in MODES:
            on = wide is not None and wide.mode == mode
            metrics.kill_switch.labels("operator", mode).set(1 if on else 0)
