"""Loading the experiment config: safe YAML, --set overrides, and messages for every mistake.

The schema itself is config/schema.py.

Everything a user can get wrong in a config is caught here, before any data is
read, with a message that names the key's dotted path and the fix.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from gradfit.config.schema import Config
from gradfit.errors import ConfigError
from gradfit.files import read_text_input

# ---------------------------------------------------------------- loading and errors


class _SafeLoader(yaml.SafeLoader):
    """yaml's SafeLoader, with 1e-3 read as a float (YAML 1.1 wants 1.0e-3)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader, node, deep=False):
    """A mapping that refuses a key given twice (the second would silently win)."""
    seen: dict = {}
    for key_node, _ in node.value:  # the mapping's own keys (before '<<' merges, which may be overridden)
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"the key {key_node.value!r} is given twice"
                + (f" (lines {seen[key] + 1} and {key_node.start_mark.line + 1})" if seen[key] != key_node.start_mark.line else ""),
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_SafeLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: _construct_mapping(loader, node))

# YAML aliases share one object; expanded, a few lines can stand for billions of values
# (the "billion laughs"), or for a value that contains itself. Refuse both.
MAX_CONFIG_NODES = 100_000


def _check_size(obj: Any, source: str) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(v: Any, depth: int) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in on_path:
            raise ConfigError(f"{source}: a YAML alias makes a value contain itself", hint="remove the '*alias' that refers to its own anchor")
        if id(v) in sizes:
            return sizes[id(v)]
        if depth > 100:
            raise ConfigError(f"{source}: the config is nested more than 100 levels deep")
        on_path.add(id(v))
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        n = 1 + sum(size(x, depth + 1) for x in items)
        on_path.discard(id(v))
        if n > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: the config expands to more than {MAX_CONFIG_NODES:,} values (through YAML aliases?)",
                hint="a gradfit config is a few dozen keys; write it out without '&anchor'/'*alias' chains",
            )
        sizes[id(v)] = n
        return n

    size(obj, 0)


def yaml_load(text: str, source: str) -> Any:
    """Parse YAML safely; errors name the source and the line."""
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(exc.problem)
        if "constructor for the tag" in problem:
            raise ConfigError(
                f"{source}:{where}: YAML tags that construct objects are not allowed ({problem})",
                hint="a gradfit config holds plain values only: numbers, strings, lists and mappings",
            ) from None
        hint = "keep one of them" if "given twice" in problem else "a gradfit config holds plain values only: numbers, strings, lists and mappings"
        raise ConfigError(f"{source}:{where}: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}:{where} YAML syntax error: {problem}",
            hint="check the indentation and the ':' after each key",
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to read") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # e.g. an explicit '!!float abc' or '!!int x': the safe constructors raise plain errors.
        raise ConfigError(f"{source}: a YAML value cannot be read: {exc}", hint="write plain numbers and strings, without '!!' tags") from None
    _check_size(data, source)
    return data


def _parse_scalar(text: str) -> Any:
    try:
        return yaml_load(text, "--set value") if text.strip() else text
    except ConfigError:
        return text


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply KEY=VALUE overrides (dotted paths, YAML scalars) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05")
        key, _, value = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted path like optimizer.lr")
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                _check_path(parts[: i + 1], raw, item)
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        _check_path(parts, raw, item)
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _check_path(parts: list[str], raw: dict, item: str) -> None:
    """Refuse a --set path that names no config key, suggesting the closest one."""
    cls: Any = Config
    node: Any = raw
    for i, part in enumerate(parts):
        fields = _fields_of(cls, node)
        if fields is None:
            return  # a free-form mapping (e.g. model.start): anything goes
        if part not in fields:
            here = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a config key{_suggest(part, fields)}",
                hint=f"keys at {here}: {', '.join(sorted(fields))}",
            )
        cls = fields[part]
        node = node.get(part) if isinstance(node, dict) else None


def _model_classes(annotation) -> list:
    """The BaseModel classes an annotation can hold (through Optional/Union/Annotated)."""
    import typing  # (imported here for start-up time)

    out = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
            continue
        for arg in typing.get_args(a):
            stack.append(arg)
    return out


def _fields_of(cls_or_ann, node) -> Optional[dict]:
    """Field name -> annotation at this level, picking a union member by the node's kind."""
    classes = _model_classes(cls_or_ann) if not (isinstance(cls_or_ann, type) and issubclass(cls_or_ann, BaseModel)) else [cls_or_ann]
    if not classes:
        return None
    chosen = classes[0]
    if len(classes) > 1:
        kind = node.get("kind") if isinstance(node, dict) else None
        for c in classes:
            f = c.model_fields.get("kind")
            if f is not None and kind in getattr(f.annotation, "__args__", ()):
                chosen = c
                break
        else:
            merged: dict = {}
            for c in classes:
                merged.update({k: v.annotation for k, v in c.model_fields.items()})
            return merged
    return {k: v.annotation for k, v in chosen.model_fields.items()}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short_repr(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _format_errors(exc: ValidationError, raw: dict, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        # Drop discriminator tags pydantic inserts into the location ('model', 'polynomial', 'degree').
        path: list = []
        node: Any = raw
        tagged: set = set()  # the tag comes once, right after its field; 'formula' is a kind and a key
        for part in loc:
            if isinstance(node, dict) and isinstance(node.get("kind"), str) and part == node.get("kind") and (
                part not in node or id(node) not in tagged
            ):
                tagged.add(id(node))
                continue
            if isinstance(part, str) and part.startswith("function-"):
                continue
            path.append(part)
            node = node.get(part) if isinstance(node, dict) else (node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
        dotted = ".".join(str(p) for p in path) or "(top level)"
        typ = err["type"]
        if typ == "extra_forbidden":
            parent: Any = raw
            cls: Any = Config
            for p in path[:-1]:
                fields = _fields_of(cls, parent)
                cls = fields.get(p) if fields else None
                parent = parent.get(p) if isinstance(parent, dict) else None
            fields = _fields_of(cls, parent) or {}
            valid = ", ".join(sorted(fields)) if fields else ""
            lines.append(
                f"{dotted}: unknown key{_suggest(str(path[-1]), fields)}" + (f" (valid keys here: {valid})" if valid else "")
            )
        elif typ == "missing":
            lines.append(f"{dotted}: required key is missing")
        elif typ == "union_tag_invalid":
            ctx = err.get("ctx", {})
            lines.append(
                f"{dotted}.kind: unknown kind {ctx.get('tag')!r}; choose one of {ctx.get('expected_tags')}"
            )
        elif typ == "union_tag_not_found":
            lines.append(f"{dotted}.kind: required key is missing (it says which {dotted} to use)")
        elif typ == "literal_error":
            lines.append(f"{dotted}: {err['input']!r} is not allowed; {err['msg'].replace('Input should be', 'expected')}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            # pydantic's "Input should be ..." reads better as "must be ...".
            msg = msg.replace("Input should be", "must be").replace("String should have", "must have")
            msg = msg.replace("List should have", "must have").replace("Tuple should have", "must have")
            inp = err.get("input")
            shown = "" if isinstance(inp, (dict, list)) or typ.startswith("value_error") else f" (got {_short_repr(inp)})"
            lines.append(f"{dotted}: {msg}{shown}")
    n = len(lines)
    head = f"{source}: invalid config ({n} problem{'s' if n > 1 else ''})" if n > 1 else f"{source}: invalid config"
    return ConfigError(head + "\n" + "\n".join(f"  - {line}" for line in lines))


def validate_config(raw: Any, source: str = "config", base_dir: Path | str = ".") -> Config:
    """Validate a raw mapping into a Config, or raise ConfigError naming every problem."""
    if raw is None:
        raise ConfigError(f"{source}: the config is empty", hint="run 'gradfit init' for a commented example")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping of keys to values, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise _format_errors(exc, raw, source) from None
    cfg._base_dir = Path(base_dir)
    _check_numbers(cfg, source)
    return cfg


def _check_numbers(cfg: Config, source: str) -> None:
    """Refuse inf/nan anywhere in the config (pydantic accepts them as floats)."""

    def walk(v, path):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{source}: {path}: must be a finite number, got {v}")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else k)
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(cfg.model_dump(), "")


def load_config(path: str | Path, overrides=()) -> Config:
    """Read a YAML experiment file, apply --set overrides, validate; raise ConfigError on any problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}", hint="check the path, or run 'gradfit init' to write one")
    if p.is_dir():
        raise ConfigError(f"{p} is a directory, not a config file")
    text = read_text_input(p, "config file", ConfigError)  # a FIFO or a device is refused, not read
    raw = yaml_load(text, str(p))
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, str(p), p.parent)


def config_from_dict(raw: dict, overrides=(), base_dir: Path | str = ".") -> Config:
    """Validate a mapping (e.g. from Python code) as a config."""
    import copy  # (imported here for start-up time)

    raw = apply_overrides(copy.deepcopy(raw), overrides)
    return validate_config(raw, "config", base_dir)


def dump_yaml(cfg: Config | dict) -> str:
    """The resolved config (or its dict, as written to a run directory) as YAML, keys in schema order."""
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True, default_flow_style=None)
