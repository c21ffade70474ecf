"""Each DVC stage's code deps = the import closure of its `stages/` module (+ the `cem` entry point).

`python scripts/dvc_deps.py` prints, per stage of dvc.yaml, the code files it must list and what it
lists instead; exit 1 on any difference. `--write` rewrites those lists in place (comments kept). tests/test_dvc.py runs the same check, so an edit of a
file reruns exactly the stages that import it (directly, lazily inside a function, or transitively),
and no others.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
ENTRY = "stages/cli.py"


def _module_file(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for cand in (path.with_suffix(".py"), path / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Modules of our packages imported anywhere in a file (top level or inside functions)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES and _module_file(m)}


def closure(module_file: Path) -> list[str]:
    seen: set[Path] = set()
    todo = [module_file]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_module_file(m) for m in _imports(path))
    files = {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py" or p.stat().st_size}
    return sorted(files | {ENTRY})


def stage_module(cmd: str) -> Path:
    """`cem train supervised` -> stages/train.py (the command's first word names the module)."""
    words = cmd.split()
    if words[0] != "cem":
        raise ValueError(f"not a cem command: {cmd}")
    return ROOT / "stages" / f"{words[1].replace('-', '_')}.py"


def code_deps(deps: list[str]) -> list[str]:
    return sorted(d for d in deps if d.endswith(".py"))


def check(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (expected code deps, listed code deps)} for every stage that differs."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    wrong = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        want = closure(stage_module(body["cmd"]))
        have = code_deps(body.get("deps", []))
        if want != have:
            wrong[name] = (want, have)
    return wrong


def write(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's block of code-dep lines (`- pipeline/x.py`, `- stages/y.py`) by its closure."""
    import re
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    wanted = iter([closure(stage_module(s.get("do", s)["cmd"])) for s in stages.values()])
    code_line = re.compile(r"^(\s+)- (?:pipeline|stages)/\S+\.py\s*$")
    bare = [name for name, s in stages.items() if not code_deps(s.get("do", s).get("deps", []))]
    if bare:  # blocks are matched to stages in order: a stage without one would get its neighbour's list
        sys.exit(f"stage(s) {', '.join(bare)} list no code deps: add one line such as `- stages/<module>.py` "
                 "under their deps, then run --write again")
    out, lines, i = [], dvc_yaml.read_text().splitlines(), 0
    while i < len(lines):
        m = code_line.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        while i < len(lines) and code_line.match(lines[i]):
            i += 1
        out.extend(f"{m.group(1)}- {f}" for f in next(wanted))
    dvc_yaml.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    bad = check()
    for name, (want, have) in bad.items():
        print(f"{name}: must list {want}")
        print(f"{' ' * len(name)}  lists     {have}")
    print("dvc.yaml code deps match the import closures" if not bad else "")
    sys.exit(1 if bad else 0)
