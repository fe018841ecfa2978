"""Write docs/config.md, the config reference, from the pydantic schema (one source of truth).

Run: python docs/gen_config_reference.py  (tests/test_docs.py checks the file is current).
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gradfit.config.schema import Config

HERE = Path(__file__).resolve().parent


# A tab as \t; a pipe escaped, or it ends the table cell (GitHub's tables unescape it inside code).
_SHOWN = {"\t": "\\t", "|": "\\|"}


def _type_text(ann) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if ann is type(None):
        return "null"
    if origin is typing.Literal:
        return " \\| ".join(f"`{_SHOWN.get(a, a)}`" for a in args)
    if origin is typing.Union or str(origin) == "types.UnionType":
        return " or ".join(_type_text(a) for a in args)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (list, tuple):
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis)
        return f"list of {inner}" if origin is list else f"[{inner}]"
    if origin is dict:
        return "mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return getattr(ann, "__name__", str(ann))


def _default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def _constraints(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def _sections(cls, prefix: str):
    rows = []
    nested = []
    for name, field in cls.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        members = [a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        desc = (field.description or "").replace("|", "\\|")
        cons = _constraints(field)
        if cons:
            desc = f"{desc} ({cons})" if desc else cons
        if members and len(members) > 1:
            kinds = [m.model_fields["kind"].annotation.__args__[0] for m in members]
            rows.append((path, "one of the kinds below (`kind` chooses)", _default_text(field), ""))
            for m, k in zip(members, kinds):
                nested.append((f"{path} (kind: {k})", m, f"{path}."))
        elif members:
            rows.append((path, "section", _default_text(field), desc))
            nested.append((path, members[0], f"{path}."))
        else:
            rows.append((path, _type_text(ann), _default_text(field), desc))
    return rows, nested


def _flatten(ann):
    stack, out = [ann], []
    while stack:
        a = stack.pop()
        args = typing.get_args(a)
        if args and typing.get_origin(a) in (typing.Union, typing.Annotated) or str(typing.get_origin(a)) == "types.UnionType":
            stack.extend(reversed(args))
        else:
            out.append(a)
    return out


def render() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from gradfit's schema by `python docs/gen_config_reference.py`; do not edit by hand.",
        "Every key is optional unless marked required. Unknown keys are errors. `gradfit check CONFIG`",
        "prints a config with every default filled in; `gradfit schema` prints the JSON Schema.",
        "",
    ]
    queue = [("top level", Config, "")]
    done = set()
    while queue:
        title, cls, prefix = queue.pop(0)
        if title in done:  # (a section two kinds share, e.g. model.penalty: once)
            continue
        done.add(title)
        rows, nested = _sections(cls, prefix)
        lines += [f"## {title}", ""]
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].split()  # (the first paragraph, as one line)
        if doc and title != "top level":
            lines += [" ".join(doc), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{p}` | {t} | {d} | {m} |" for p, t, d, m in rows]
        lines.append("")
        queue.extend(nested)
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if (HERE / "config.md").read_text() == text else 1)
    (HERE / "config.md").write_text(text)
    print(f"wrote {HERE / 'config.md'}")
