"""Field ownership for server-side apply: `metadata.managedFields` in the FieldsV1 format.

Paths are tuples of map keys; maps are walked, lists and scalars are leaves (atomic), which is
what Kubernetes does for lists without merge keys. Identity fields are not owned.
"""

from __future__ import annotations

import copy
import datetime

IGNORED = {
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "uid"),
    ("metadata", "resourceVersion"),
    ("metadata", "generation"),
    ("metadata", "creationTimestamp"),
    ("metadata", "managedFields"),
    ("metadata", "deletionTimestamp"),
}
MISSING = object()


def paths(obj: dict, prefix: tuple = ()) -> set[tuple]:
    """Leaf paths of `obj` (empty maps count as leaves)."""
    out: set[tuple] = set()
    for key, value in obj.items():
        path = (*prefix, key)
        if path in IGNORED or path == ("status",):
            continue
        if isinstance(value, dict) and value:
            out |= paths(value, path)
        else:
            out.add(path)
    return out


def value_at(obj, path: tuple):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return MISSING
        obj = obj[key]
    return obj


def to_fields_v1(owned: set[tuple]) -> dict:
    tree: dict = {}
    for path in sorted(owned):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: dict, prefix: tuple = ()) -> set[tuple]:
    out: set[tuple] = set()
    for key, sub in tree.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        if sub:
            out |= from_fields_v1(sub, path)
        else:
            out.add(path)
    return out


def _overlaps(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def managers(obj: dict) -> list[dict]:
    return list((obj.get("metadata") or {}).get("managedFields") or [])


def _entry(manager: str, operation: str, api_version: str, owned: set[tuple]) -> dict:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": _now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(owned),
    }


def _set_managers(obj: dict, entries: list[dict]) -> None:
    obj["metadata"]["managedFields"] = [e for e in entries if e.get("fieldsV1")]


def record_update(old: dict | None, new: dict, manager: str, api_version: str) -> None:
    """A create/update/patch by `manager`: it owns what it changed; others lose those fields."""
    changed = {
        p
        for p in paths(new)
        if old is None or value_at(old, p) != value_at(new, p) or value_at(old, p) is MISSING
    }
    present = paths(new)
    entries = []
    mine: set[tuple] = set(changed)
    for entry in managers(old or {}):
        owned = from_fields_v1(entry.get("fieldsV1") or {})
        owned = {p for p in owned if p in present or any(_overlaps(p, q) for q in present)}
        if entry["manager"] == manager and entry.get("operation") == "Update":
            mine |= owned
            continue
        owned = {p for p in owned if not any(_overlaps(p, c) for c in changed)}
        entries.append({**entry, "fieldsV1": to_fields_v1(owned)})
    if mine:
        entries.append(_entry(manager, "Update", api_version, mine))
    _set_managers(new, entries)


def _merge(base: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _remove(obj: dict, path: tuple) -> None:
    parents = []
    node = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(parents):
        if parent[key] == {}:
            del parent[key]


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, tuple]]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts


def apply(current: dict | None, applied: dict, manager: str, force: bool, api_version: str) -> dict:
    """Server-side apply of `applied` by `manager` onto `current`; raises ApplyConflict."""
    wanted = paths(applied)
    contested = {w for w in wanted if value_at(applied, w) != {}}  # an empty map takes nothing
    conflicts: list[tuple[str, tuple]] = []
    entries = []
    previous: set[tuple] = set()
    for entry in managers(current or {}):
        owned = from_fields_v1(entry.get("fieldsV1") or {})
        if entry["manager"] == manager and entry.get("operation") == "Apply":
            previous = owned
            continue
        clash = {
            p
            for p in owned
            for w in contested
            if _overlaps(p, w) and value_at(current, w) != value_at(applied, w)
        }
        if clash and not force:
            conflicts += [(entry["manager"], p) for p in sorted(clash)]
        owned -= {p for p in owned if any(_overlaps(p, w) for w in contested)}
        entries.append({**entry, "fieldsV1": to_fields_v1(owned)})
    if conflicts:
        raise ApplyConflict(conflicts)
    result = copy.deepcopy(current) if current is not None else {}
    still_owned = (
        set().union(*(from_fields_v1(e["fieldsV1"]) for e in entries)) if entries else set()
    )
    for path in previous - wanted:
        if not any(_overlaps(path, o) for o in still_owned):
            _remove(result, path)
    _merge(result, {k: v for k, v in applied.items() if k != "status"})
    entries.append(_entry(manager, "Apply", api_version, wanted))
    result.setdefault("metadata", {})
    _set_managers(result, entries)
    return result


def conflict_message(conflicts: list[tuple[str, tuple]], version: str) -> tuple[str, list[dict]]:
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{m}" using {version}',
            "field": "." + ".".join(p),
        }
        for m, p in conflicts
    ]
    if len(conflicts) == 1:
        m, p = conflicts[0]
        text = f'Apply failed with 1 conflict: conflict with "{m}" using {version}: .{".".join(p)}'
    else:
        lines = "".join(f"\n* {c['message']}: {c['field']}" for c in causes)
        text = f"Apply failed with {len(conflicts)} conflicts: conflicts with {lines}"
    return text, causes
