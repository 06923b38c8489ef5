"""The package's shape: layers that import only downwards, and modules that say what they own.

These read the source (ast), so a new module is checked the moment it exists.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from helpers import REPO

PACKAGE = os.path.join(REPO, "synth")

# Lower layers know nothing of higher ones; within a layer, modules import each other freely.
# qc (take metrics and the retake policy) and text (spoken-form normalisation) sit below the
# pipeline that uses them; export and train read outputs, as book does.
LAYERS = {"errors": 0, "engine": 1, "store": 1, "qc": 2, "text": 2, "pipeline": 3, "book": 4, "export": 4, "train": 4,
          "bench": 5, "cli": 6, "__main__": 6}


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


def _layer(module: str) -> int | None:
    """The layer of `synth.X...`; None for the package root (synth/__init__.py)."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


def _synth_imports(path: str) -> list[tuple[int, str]]:
    """(line, module) of every `synth...` import in the file, top level or inside functions."""
    tree = ast.parse(open(path).read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "synth"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "synth":
            # `from synth.store import storage` imports synth.store.storage
            out += [(node.lineno, f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in _modules() else node.module)
                    for a in node.names]
    return out


def test_every_module_belongs_to_a_known_layer():
    unknown = [m for m in _modules() if m != "synth" and m.split(".")[1] not in LAYERS]
    assert not unknown, f"modules outside the layers {sorted(LAYERS)}: {unknown} (add them to a layer's package)"


def test_imports_only_go_down_the_layers():
    upward = []
    for module, path in _modules().items():
        mine = _layer(module)
        for line, imported in _synth_imports(path):
            theirs = _layer(imported)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{os.path.relpath(path, REPO)}:{line} imports {imported}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_every_module_and_package_opens_with_what_it_owns():
    missing = []
    for module, path in _modules().items():
        doc = ast.get_docstring(ast.parse(open(path).read()))
        if not doc or len(doc.split()) < 5:
            missing.append(os.path.relpath(path, REPO))
    assert not missing, f"modules without a docstring saying what they own: {missing}"


def test_engine_layer_imports_neither_ray_nor_pydantic():
    third_party = []
    for module, path in _modules().items():
        if _layer(module) != LAYERS["engine"]:
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            third_party += [f"{module}: {n}" for n in names if n.split(".")[0] in ("ray", "pydantic", "yaml")]
    assert not third_party, third_party


def test_the_benchmark_runs_where_ray_and_pydantic_are_missing():
    """A GPU box has torch and transformers but neither Ray nor pydantic: the benchmark's and the
    device check's imports (the engines, chains, the context planner) and command lines must load there."""
    blocker = (
        "import sys\n"
        "for name in ('ray', 'pydantic', 'yaml'):\n"
        "    sys.modules[name] = None  # import fails, as where the package is not installed\n"
        "from synth.cli import main\n"
        "import synth.bench.throughput, synth.engine.fast_engine, synth.engine.reference_engine\n"
        "import synth.bench.gpu_check\n"
        "try:\n"
        "    synth.bench.gpu_check.main(['--help'])  # scripts/gpu_check.sh --help\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.exit(main(['bench', '--help']))\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--workload" in result.stdout and "--timeouts" in result.stdout


def test_the_layout_table_matches_the_tree():
    """docs/architecture.md's table (the README's *Layout* links it) names every package, module and
    job script, and nothing else."""
    table = open(os.path.join(REPO, "docs", "architecture.md")).read()
    assert "docs/architecture.md" in open(os.path.join(REPO, "README.md")).read()
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    tree = {os.path.relpath(path, REPO) for module, path in _modules().items() if not path.endswith("__init__.py")}
    tree |= {os.path.relpath(os.path.dirname(path), REPO) + "/" for path in _modules().values()
             if path.endswith("__init__.py") and os.path.dirname(path) != PACKAGE}
    tree |= {f"jobs/{name}" for name in os.listdir(os.path.join(REPO, "jobs")) if name.endswith(".py")}
    assert not tree - listed, f"missing from docs/architecture.md's table: {sorted(tree - listed)}"
    assert not listed - tree, f"in docs/architecture.md's table but not in the tree: {sorted(listed - tree)}"


def test_the_driver_and_the_cli_start_without_torch():
    """A job's driver and every `synth` command import torch only where a model runs: each starts in a
    fifth of a second rather than one and a half, which tests and users pay at every command (a
    module-level torch import in the QC modules once cost the suite a minute and raced a test)."""
    probe = ("import sys\nimport synth.cli, synth.pipeline.runner, synth.pipeline.retakes, synth.qc.quality\n"
             "import synth.qc.scorer_process\nprint('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
