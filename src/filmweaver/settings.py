"""Settings from files and ``--set`` overrides, for every command that takes a config (``generate``'s
engine settings, ``train``'s training config): one reader, one override syntax, one unknown-key check.

``--set dotted.key=value`` takes a YAML value (``3``, ``0.5``, ``null``, ``[1, 2]``, ``{a: 1}``); a
number in the key indexes a list (``dit.stages.1.modes.shot=0.5``).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel


class SettingsError(ValueError):
    """A config file or an override that cannot be used: one line naming the file, key or option."""


def read_settings(path: str | Path) -> dict:
    """A YAML (or JSON, which is YAML) mapping from ``path``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise SettingsError(f"{path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict, overrides: list[str], source: str = "the settings") -> dict:
    """``raw`` with every ``dotted.key=value`` of ``overrides`` set in it (in place; returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"--set {item!r}: expected dotted.key=value")
        node = raw
        *parents, leaf = key.split(".")
        try:
            parsed = yaml.safe_load(value)
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            if isinstance(node, list):
                node[int(leaf)] = parsed
            else:
                node[leaf] = parsed
        except (ValueError, IndexError, AttributeError, TypeError, yaml.YAMLError) as e:
            raise SettingsError(f"--set {item}: {key!r} does not name a setting of {source} ({e})") from None
    return raw


def unknown_keys(model: type[BaseModel], raw: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``raw`` that ``model`` (and its nested sections) has no field for: a typo such
    as ``shot_cache.kk`` must be an error, not a setting silently ignored."""
    out = []
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            out.append(prefix + str(key))
            continue
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out += unknown_keys(sub, value, f"{prefix}{key}.")
    return out


def merge_settings(base: dict, over: dict) -> dict:
    """``base`` with ``over`` on top, section by section (neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_settings(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted_keys(settings: dict, depth: int | None = None) -> dict:
    """Nested settings as one level of dotted keys, ``{sampler: {shift: 3}}`` -> ``{"sampler.shift": 3}``
    (the keys of a model's filmweaver.json defaults and of ``--set``); ``depth``: flatten only that many
    levels of sections (a deeper mapping stays a value)."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and (depth is None or depth > 0):  # an empty section adds nothing
            inner = dotted_keys(value, None if depth is None else depth - 1)
            out.update({f"{key}.{k}": v for k, v in inner.items()})
        else:
            out[key] = value
    return out
