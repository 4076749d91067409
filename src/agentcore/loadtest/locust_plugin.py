"""Loaded into Locust next to the scenario (``locust -f scenario.py,locust_plugin.py``).

Records every request's completion time, latency, name and outcome, so the
runner computes percentiles from the full distribution instead of Locust's
rounded buckets (it keeps 2 significant digits above 100 ms). Each Locust
process writes its own files under ``$AGENTCORE_LOADTEST_OUT/latency/`` when
it quits: ``<pid>.names.json`` and four column files (``.t.f64`` epoch
seconds, ``.ms.f32`` latency, ``.name.u16`` index into the names, ``.ok.u8``).
Cost: one append per column per request; memory 15 bytes a request, capped
at ``AGENTCORE_LOADTEST_MAX_SAMPLES`` (default 30 million) per process.

Standalone on purpose (standard library and Locust only): Locust imports it
by path, without the agentcore package on its mind. It is thus an entry point
of its own, in Locust's process, and reads its two settings from the
environment the runner starts Locust with.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from typing import Any

from locust import events

_T = array("d")
_MS = array("f")
_NAME = array("H")
_OK = array("B")
_NAMES: dict[str, int] = {}
_LIMIT = int(os.environ.get("AGENTCORE_LOADTEST_MAX_SAMPLES", "30000000"))


def _record(
    request_type: str,
    name: str,
    response_time: float,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    if len(_T) >= _LIMIT:
        return
    key = f"{request_type} {name}"
    index = _NAMES.get(key)
    if index is None:
        index = _NAMES[key] = len(_NAMES)
    _T.append(time.time())
    _MS.append(response_time or 0.0)
    _NAME.append(index)
    _OK.append(0 if exception else 1)


def _dump(**_: Any) -> None:
    out = os.environ.get("AGENTCORE_LOADTEST_OUT")
    if not out or not _T:
        return
    folder = os.path.join(out, "latency")
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, str(os.getpid()))
    for suffix, column in ((".t.f64", _T), (".ms.f32", _MS), (".name.u16", _NAME), (".ok.u8", _OK)):
        with open(base + suffix, "wb") as fh:
            column.tofile(fh)
    with open(base + ".names.json", "w") as fh:
        json.dump(sorted(_NAMES, key=_NAMES.__getitem__), fh)


events.request.add_listener(_record)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_dump)  # type: ignore[no-untyped-call]
