"""The repository holds sources, not generated files: make clean removes only what git ignores."""
import os
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_clean_removes_only_ignored_generated_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "clean"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    words = shlex.split(dry.stdout.replace("\\\n", " "))
    assert words[:2] == ["rm", "-rf"], dry.stdout
    paths = words[2:]
    assert {"outputs", "demo_data", "demo_data-long", "build"} <= set(paths)
    for path in paths:
        assert git("ls-files", "--", path).stdout == "", f"make clean deletes tracked {path}"
        assert git("check-ignore", "-q", "--no-index", path + "/x").returncode == 0, \
            f"{path} is generated but not ignored"


def test_generated_data_and_exports_are_ignored():
    for path in ("demo_data-long/train2017/000000000001.jpg", "ssd.mindir", "ssd.opencv.onnx",
                 "ssd.air", "infer_output/acc.log", "ascend310_infer/out/main"):
        assert git("check-ignore", "-q", "--no-index", path).returncode == 0, path
    assert not [p for p in git("ls-files").stdout.split() if p.startswith("demo_data")]


def source_imports():
    """{module: modules of src it imports (at the top or inside functions)} for src/."""
    import ast

    graph = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "src")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(
                ".__init__")
            found = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
            graph[module] = {m for m in found if m.startswith("src.") and m != module}
    return graph


def test_src_imports_have_no_cycle_and_never_reach_up():
    """Modules import downwards only: no cycle among src modules, nothing under src/model or
    src/data imports src/train or src/infer, src/infer (evaluation, prediction, export)
    imports nothing of src/train (training imports evaluation, not the reverse), and config,
    cli and device load no MindSpore at their top."""
    graph = source_imports()
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(path + [module])}"
        state[module] = "open"
        for target in graph.get(module, ()):
            visit(target, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])
    for module, targets in graph.items():
        if module.startswith(("src.model", "src.data")):
            assert not [t for t in targets if t.startswith(("src.train", "src.infer"))], module
        if module.startswith("src.infer"):
            assert not [t for t in targets if t.startswith("src.train")], module
    code = ("import sys; import src.cli, src.config, src.device, src.measure; "
            "print('mindspore' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_make_demo_can_run_again_into_its_own_folders():
    """A second `make demo` finds its earlier run in outputs/demo/train: train.py refuses a
    run's folder unless told, so the demo targets pass --overwrite true (the old run moves to
    previous-<time>/, nothing is deleted)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for target in ("demo", "demo-long"):
        dry = subprocess.run(["make", "--no-print-directory", "-n",
                              target], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
        trains = [line for line in dry.stdout.splitlines() if " train.py " in line]
        assert trains and all("--overwrite true" in line for line in trains), dry.stdout
