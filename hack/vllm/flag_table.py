#!/usr/bin/env python3
"""Write operator/kiban/api/vllm_flags.py: every option string `vllm serve` 0.33 registers, with
how many values it takes, read statically from vLLM's own source (never imported, never installed).

  python hack/vllm/flag_table.py [--src ~/.cache/kiban/vllm-0.33.0-src/vllm] [--check]

What it reads, mirroring vLLM 0.33's parser construction:
- `make_arg_parser` (entrypoints/common/cli_args.py): the explicit `add_argument` calls, then
  `FrontendArgs.add_cli_args` (one flag per dataclass field, `_customize_cli_kwargs` edits) and
  `AsyncEngineArgs.add_cli_args` / `EngineArgs.add_cli_args` (engine/arg_utils.py), whose
  `**xxx_kwargs["field"]` come from `get_kwargs(SomeConfig)`: the field's annotation decides the
  argparse action exactly as `_compute_kwargs` does (dataclass -> one JSON value; bool|str|None ->
  optional value; bool -> BooleanOptionalAction, so also --no-X and, for --enable-/--disable-,
  vLLM's EnableDisableAction inverse; tuple/list/set -> nargs '+'; anything else -> one value);
- explicit keywords in a call (`action=`, `nargs=`) and edits of the kwargs dicts before the
  call (`xxx_kwargs["f"]["action"] = ...`, `del xxx_kwargs["f"]["nargs"]`) win over the type.

The long flags it finds are checked against ../shared/reference/vllm-0.33-serve-flags.txt (the
reference list) by tests/unit/api/test_vllm_flags.py, so a mistake here shows up as a difference.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "operator" / "kiban" / "api" / "vllm_flags.py"
DEFAULT_SRC = Path.home() / ".cache" / "kiban" / "vllm-0.33.0-src" / "vllm"

NONE, ONE, OPTIONAL, MANY = "none", "one", "optional", "many"


@dataclass
class Arg:
    options: list[str]
    arity: str
    boolean_optional: bool = False
    origin: str = ""
    extra: dict = field(default_factory=dict)


class Source:
    """Classes, module-level aliases and functions of the vLLM tree, by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.classes: dict[str, ast.ClassDef] = {}
        self.aliases: dict[str, ast.expr] = {}
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts or "benchmarks" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, node)
                elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    self.aliases.setdefault(node.targets[0].id, node.value)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                    self.aliases.setdefault(node.target.id, node.value)
                elif hasattr(ast, "TypeAlias") and isinstance(node, ast.TypeAlias) and isinstance(node.name, ast.Name):
                    self.aliases.setdefault(node.name.id, node.value)

    def fields(self, class_name: str) -> dict[str, ast.expr]:
        """Annotated class attributes, base classes first (dataclass field order)."""
        node = self.classes[class_name]
        out: dict[str, ast.expr] = {}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in self.classes:
                out.update(self.fields(base.id))
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                if _is_classvar(item.annotation):
                    continue
                out[item.target.id] = item.annotation
        return out

    def is_dataclass(self, name: str) -> bool:
        node = self.classes.get(name)
        if node is None:
            return False
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            label = ast.unparse(target)
            if label in ("config", "dataclass", "dataclasses.dataclass") or label.endswith(".dataclass"):
                return True
        return False


def _is_classvar(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith("ClassVar") or text.startswith("typing.ClassVar")


def type_members(src: Source, node: ast.expr, depth: int = 0) -> list[tuple[str, ast.expr]]:
    """The union members of an annotation, each as (kind, node): kinds bool, none, str, int, float,
    dict, list, tuple, set, literal, dataclass, other."""
    if depth > 20:
        return [("other", node)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return type_members(src, ast.parse(node.value, mode="eval").body, depth + 1)
    if isinstance(node, ast.Constant) and node.value is None:
        return [("none", node)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return type_members(src, node.left, depth + 1) + type_members(src, node.right, depth + 1)
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value).split(".")[-1]
        inner = node.slice
        if head in ("Optional",):
            return type_members(src, inner, depth + 1) + [("none", node)]
        if head == "Union":
            elts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            return [m for e in elts for m in type_members(src, e, depth + 1)]
        if head == "Annotated":
            first = inner.elts[0] if isinstance(inner, ast.Tuple) else inner
            return type_members(src, first, depth + 1)
        if head == "Literal":
            return [("literal", node)]
        if head in ("list", "List", "Sequence"):
            return [("list", node)]
        if head in ("tuple", "Tuple"):
            return [("tuple", node)]
        if head in ("set", "Set", "frozenset"):
            return [("set", node)]
        if head in ("dict", "Dict", "Mapping"):
            return [("dict", node)]
        return [("other", node)]
    if isinstance(node, ast.Name | ast.Attribute):
        name = ast.unparse(node).split(".")[-1]
        if name == "bool":
            return [("bool", node)]
        if name in ("str", "int", "float", "dict", "list", "tuple", "set"):
            return [(name, node)]
        if name == "None":
            return [("none", node)]
        if src.is_dataclass(name):
            return [("dataclass", node)]
        alias = src.aliases.get(name)
        if alias is not None and not isinstance(alias, ast.Call):
            resolved = type_members(src, alias, depth + 1)
            if resolved and all(kind != "other" or True for kind, _ in resolved):
                return resolved
        if name in src.classes:
            bases = [ast.unparse(b) for b in src.classes[name].bases]
            if any(b.endswith("dict") or b.endswith("TypedDict") for b in bases):
                return [("dict", node)]
            if any(b.endswith("Enum") or b.endswith("StrEnum") or b.endswith("IntEnum") for b in bases):
                return [("other", node)]
        return [("other", node)]
    return [("other", node)]


def arity_from_type(src: Source, annotation: ast.expr) -> tuple[str, bool]:
    """(arity, boolean_optional) as vLLM's _compute_kwargs decides them."""
    members = type_members(src, annotation)
    kinds = {kind for kind, _ in members}
    if "dataclass" in kinds:
        return ONE, False
    if kinds == {"bool", "str", "none"}:
        return OPTIONAL, False
    if "bool" in kinds:
        return NONE, True
    if "literal" in kinds:
        return ONE, False
    for coll in ("tuple", "list", "set"):
        if coll in kinds:
            node = next(n for k, n in members if k == coll)
            if coll == "tuple" and isinstance(node, ast.Subscript):
                elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                if not any(isinstance(e, ast.Constant) and e.value is Ellipsis for e in elts) and len(elts) == 1:
                    return ONE, False
            return MANY, False
    return ONE, False


def _const(node: ast.expr):
    return node.value if isinstance(node, ast.Constant) else None


def _explicit(keywords: dict[str, ast.expr], base: tuple[str, bool]) -> tuple[str, bool]:
    """Apply explicit action/nargs keywords over the type's arity."""
    arity, boolean_optional = base
    if "action" in keywords:
        action = ast.unparse(keywords["action"]).strip("'\"")
        if action in ("store_true", "store_false", "store_const", "count", "help", "version"):
            return NONE, False
        if action.endswith("BooleanOptionalAction"):
            return NONE, True
        if action == "append":
            arity, boolean_optional = ONE, False
        elif boolean_optional:  # a custom action over a bool field keeps the field's no-value form
            pass
    if "nargs" in keywords:
        nargs = _const(keywords["nargs"])
        if nargs == "?":
            return OPTIONAL, False
        if nargs in ("+", "*") or (isinstance(nargs, int) and nargs > 1):
            return MANY, False
        if nargs in (1, None) and keywords["nargs"] is not None:
            return ONE, False
    return arity, boolean_optional


class Extractor:
    def __init__(self, src: Source) -> None:
        self.src = src
        self.args: list[Arg] = []

    def function(self, class_name: str | None, func_name: str, path: str) -> ast.FunctionDef:
        tree = ast.parse((self.src.root / path).read_text(encoding="utf-8"))
        scope: list[ast.stmt] = tree.body
        if class_name:
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
            scope = cls.body
        return next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == func_name)

    def explicit_calls(self, func: ast.FunctionDef, origin: str) -> None:
        """Every `X.add_argument("--a", "-b", ..., **kw["field"])` in func, with kwargs edits."""
        kwargs_class: dict[str, str] = {}
        edits: dict[tuple[str, str], dict[str, ast.expr | None]] = {}
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                callee = ast.unparse(node.value.func)
                if callee.endswith("get_kwargs") and node.value.args and isinstance(node.targets[0], ast.Name):
                    kwargs_class[node.targets[0].id] = ast.unparse(node.value.args[0]).split(".")[-1]
            for target, value in _kwargs_edits(node):
                edits.setdefault(target[:2], {})[target[2]] = value
        for node in ast.walk(func):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                continue
            options = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            options = [o for o in options if o.startswith("-")]
            if not options:
                continue  # a positional (model_tag)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            base: tuple[str, bool] = (ONE, False)
            splats: list[ast.expr] = []
            for k in node.keywords:
                if k.arg is None and isinstance(k.value, ast.Dict):  # **{**kw["f"], "default": None}
                    for key, value in zip(k.value.keys, k.value.values):
                        if key is None:
                            splats.append(value)
                        elif isinstance(_const(key), str):
                            keywords[_const(key)] = value
                elif k.arg is None:
                    splats.append(k.value)
            for splat in splats:
                if isinstance(splat, ast.Subscript):
                    holder = ast.unparse(splat.value)
                    field_name = _const(splat.slice)
                    cls = kwargs_class.get(holder)
                    if cls and field_name:
                        annotation = self.src.fields(cls).get(field_name)
                        if annotation is None:
                            raise SystemExit(f"{origin}: {cls}.{field_name} not found for {options}")
                        base = _apply_edits(keywords, arity_from_type(self.src, annotation),
                                            edits.get((holder, field_name), {}))
            arity, boolean_optional = _explicit(keywords, base)
            self.args.append(Arg(options, arity, boolean_optional, origin))

    def frontend(self, class_name: str, path: str) -> None:
        """FrontendArgs.add_cli_args: one --field per dataclass field, after _customize_cli_kwargs."""
        edits: dict[str, dict[str, ast.expr | None]] = {}
        for cls in (class_name, "BaseFrontendArgs"):
            try:
                func = self.function(cls, "_customize_cli_kwargs", path)
            except StopIteration:
                continue
            for node in ast.walk(func):
                for target, value in _kwargs_edits(node):
                    edits.setdefault(target[1], {})[target[2]] = value
        for name, annotation in self.src.fields(class_name).items():
            keywords: dict[str, ast.expr] = {}
            base = _apply_edits(keywords, arity_from_type(self.src, annotation), edits.get(name, {}))
            arity, boolean_optional = _explicit(keywords, base)
            self.args.append(Arg([f"--{name.replace('_', '-')}"], arity, boolean_optional, class_name))


def _apply_edits(keywords: dict, base: tuple, edits: dict) -> tuple:
    """_customize_cli_kwargs' edits onto add_argument's keywords (in place); a deleted nargs
    turns a list type back into one value. Returns the arity before explicit keywords."""
    for key, value in edits.items():
        if value is None:
            keywords.pop(key, None)
            if key == "nargs" and base[0] == MANY:
                base = (ONE, False)
        else:
            keywords[key] = value
    return base


def _kwargs_edits(node: ast.AST):
    """(holder, field, key) -> value for `holder["field"]["key"] = value` (None for `del`)."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            parsed = _double_subscript(target)
            if parsed:
                yield parsed, node.value
    elif isinstance(node, ast.Delete):
        for target in node.targets:
            parsed = _double_subscript(target)
            if parsed:
                yield parsed, None


def _double_subscript(node: ast.expr) -> tuple[str, str, str] | None:
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Subscript):
        key, fld = _const(node.slice), _const(node.value.slice)
        if isinstance(key, str) and isinstance(fld, str):
            return ast.unparse(node.value.value), fld, key
    return None


def option_strings(arg: Arg) -> dict[str, str]:
    """Every option string argparse registers for arg -> its arity (BooleanOptionalAction adds
    --no-X; vLLM's EnableDisableAction adds --disable-X for --enable-X and the reverse)."""
    out = {o: arg.arity for o in arg.options}
    if arg.boolean_optional:
        for o in arg.options:
            if o.startswith("--"):
                out["--no-" + o[2:]] = NONE
        for o in arg.options:
            for prefix, inverse in (("--enable-", "--disable-"), ("--disable-", "--enable-")):
                if o.startswith(prefix):
                    out[inverse + o.removeprefix(prefix)] = NONE
    return out


def extract(src_root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(option string -> arity, option string -> canonical long flag)."""
    src = Source(src_root)
    ex = Extractor(src)
    cli = "entrypoints/common/cli_args.py"
    ex.explicit_calls(ex.function(None, "make_arg_parser", cli), "make_arg_parser")
    ex.frontend("FrontendArgs", cli)
    ex.explicit_calls(ex.function("AsyncEngineArgs", "add_cli_args", "engine/arg_utils.py"), "AsyncEngineArgs")
    ex.explicit_calls(ex.function("EngineArgs", "add_cli_args", "engine/arg_utils.py"), "EngineArgs")
    arity: dict[str, str] = {"-h": NONE, "--help": NONE}
    canonical: dict[str, str] = {"-h": "--help", "--help": "--help"}
    for arg in ex.args:
        long = next((o for o in arg.options if o.startswith("--")), arg.options[0])
        for option, kind in option_strings(arg).items():
            if option in arity and arity[option] != kind:
                raise SystemExit(f"{option} registered twice with different arities ({arity[option]}, {kind})")
            arity[option] = kind
            canonical[option] = long if not option.startswith("--") else (
                option if option in arg.options else long)
    return arity, canonical


def render(arity: dict[str, str], canonical: dict[str, str]) -> str:
    lines = [
        '"""Every option string of `vllm serve` 0.33.0 and how many values it takes.',
        "",
        "GENERATED by hack/vllm/flag_table.py from vLLM 0.33.0's own source (argparse as vLLM builds it);",
        "do not edit by hand. The long flags equal ../shared/reference/vllm-0.33-serve-flags.txt (a test).",
        '"""',
        "",
        "VLLM_VERSION = \"0.33.0\"",
        "",
        "# option string -> 'none' (a switch), 'one' (one value), 'optional' (0 or 1), 'many' (1 or more)",
        "ARITY: dict[str, str] = {",
    ]
    lines += [f"    {o!r}: {arity[o]!r}," for o in sorted(arity)]
    lines += ["}", "", "# option string -> the long flag it belongs to (short aliases, --no-X and --disable-X forms)", "CANONICAL: dict[str, str] = {"]
    lines += [f"    {o!r}: {canonical[o]!r}," for o in sorted(canonical) if canonical[o] != o]
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed table differs")
    args = parser.parse_args(argv)
    text = render(*extract(args.src))
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python hack/vllm/flag_table.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"Wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
