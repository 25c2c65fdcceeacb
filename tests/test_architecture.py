"""The package's shape: imports point one way (no cycle, function-level imports included;
each layer imports only layers below it), config imports nothing else of classlab, every
registered name has exactly one implementation, and no module shadows the standard
library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "classlab"

# Top to bottom; a module may import modules of its own layer's package or of lower layers.
LAYERS = [
    {"__main__"},
    {"cli"},
    {"api"},
    {"grid", "tools"},
    {"compare"},
    {"notebook"},  # the notebook display (live progress, cards), used by the layers above
    {"run"},
    {"report", "diagnose"},
    {"engine"},
    {"data", "models", "optim", "augment"},
    {"rundir", "stats"},
    {"config"},
    {"fmt"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every classlab module ``path`` imports, anywhere in the file (functions included).
    ``from a.b import c`` counts as importing a.b.c when that is a module, else a.b."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("classlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("classlab"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
GRAPH = {name: _imports(path) & set(MODULES) for name, path in MODULES.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_every_module_is_placed_in_a_layer():
    tops = {_top(m) for m in MODULES} - {"__init__"}
    assert tops <= set(RANK), f"not in LAYERS: {sorted(tops - set(RANK))}"


def test_no_import_cycle_function_level_imports_included():
    # A package's __init__ importing its own submodules is how packages re-export; a
    # submodule importing its package's __init__ would close a cycle, so it counts.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    top = _top(module)
    if top == "__init__":  # the package root re-exports the notebook API only
        assert GRAPH[module] <= {"classlab.api"}
        return
    for dep in GRAPH[module]:
        dep_top = _top(dep)
        same_package = dep_top == top
        assert same_package or RANK[dep_top] > RANK[top], \
            f"{module} imports {dep}: {top} may only import layers below it"


def test_config_imports_nothing_else_of_classlab_nor_torch():
    for module, deps in GRAPH.items():
        if _top(module) == "config":
            assert {_top(d) for d in deps} <= {"config"}, (module, deps)
            text = MODULES[module].read_text()
            assert "import torch" not in text and "from torch" not in text, module


def test_no_module_shadows_the_standard_library():
    # a module named like a stdlib one (the old classlab/_io.py shadowed CPython's _io)
    # confuses readers and tools; names inside packages are fine only when not stdlib names
    names = {p.stem for p in PKG.rglob("*.py")} | {p.name for p in PKG.rglob("*") if p.is_dir()}
    clash = sorted(n for n in names if n in sys.stdlib_module_names and n != "__main__")
    assert not clash, f"modules named like the standard library: {clash}"


def test_no_private_top_level_modules():
    assert not [p.name for p in PKG.glob("_*.py") if p.name not in ("__init__.py",
                                                                  "__main__.py")]


# --------------------------------------------------------------------------- one way to say it

MAX_FUNCTION_LINES = 60  # def line to last line, docstring included


def _trees():
    return {name: ast.parse(path.read_text(), filename=str(path))
            for name, path in MODULES.items()}


def test_no_function_is_longer_than_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in _trees().items() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"split these (at most {MAX_FUNCTION_LINES} lines): {long}"


def test_no_module_uses_a_private_name_of_another_module():
    found = []
    for name, tree in _trees().items():
        aliases = {}  # local name -> the classlab module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("classlab"):
                for a in node.names:
                    if a.name.startswith("_"):
                        found.append(f"{name} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names
                                if a.name.startswith("classlab")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                found.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not found, found


def _formats_like(node: ast.FunctionDef, unit: str) -> bool:
    """A function that turns a number into text ending in ``unit`` ("%", " s", " min")."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            text = "".join(v.value for v in sub.values if isinstance(v, ast.Constant))
            if text.endswith(unit) and any(isinstance(v, ast.FormattedValue)
                                           for v in sub.values):
                return True
    return False


def test_percent_and_duration_formatters_are_defined_once():
    # classlab.fmt writes every percentage and duration; a second formatter drifts apart
    # (before: four percent formatters with three blanks, three durations, three roundings)
    small = [(name, node) for name, tree in _trees().items() for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef)
             and node.end_lineno - node.lineno + 1 <= 15]  # a formatter is a small function
    for unit in ("%", " s", " min"):
        where = sorted(f"{name}.{node.name}" for name, node in small if _formats_like(node, unit)
                       and any(isinstance(s, ast.Return) for s in ast.walk(node)))
        outside = [w for w in where if not w.startswith("classlab.fmt.")]
        assert not outside, f"format {unit!r} with classlab.fmt instead: {outside}"


def test_no_nan_test_written_as_x_not_equal_x():
    # classlab.fmt.is_nan / missing say what they test; `x != x` makes the reader work it out
    found = [f"{name}:{node.lineno}: {ast.unparse(node)}" for name, tree in _trees().items()
             for node in ast.walk(tree) if isinstance(node, ast.Compare)
             and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq | ast.NotEq)
             and ast.dump(node.left) == ast.dump(node.comparators[0])]
    assert not found, found


# --------------------------------------------------------------------------- registries
# config holds the vocabulary; each implementing module registers one builder per name.


def _registries():
    from classlab.augment import AUGMENTATIONS
    from classlab.config import schema
    from classlab.data import DATASETS
    from classlab.diagnose import CAMS
    from classlab.models import ACTIVATIONS, MODELS, NORMS
    from classlab.optim import OPTIMIZERS, SCHEDULERS

    return [("datasets", schema.DATASETS, DATASETS), ("models", schema.MODELS, MODELS),
            ("norms", schema.NORMS, NORMS), ("activations", schema.ACTIVATIONS, ACTIVATIONS),
            ("optimizers", schema.OPTIMIZERS, OPTIMIZERS),
            ("schedulers", schema.SCHEDULERS, SCHEDULERS),
            ("augmentations", schema.AUGMENTATIONS, AUGMENTATIONS),
            ("cams", schema.CAMS, CAMS)]


def test_every_config_name_has_exactly_one_implementation():
    for what, names, registry in _registries():
        assert set(names) == set(registry), (what, sorted(names), sorted(registry))
        assert list(names) == sorted(names), f"{what}: keep the vocabulary sorted"


def test_every_model_builds_with_every_norm():
    import torch

    from classlab.config import ModelConfig
    from classlab.config.schema import MODELS, NORMS
    from classlab.models import build_model

    x = torch.randn(2, 3, 32, 32)
    for name in MODELS:
        for norm in NORMS:
            model = build_model(ModelConfig(name=name, norm=norm, width=8, gn_groups=2), 10)
            assert model(x).shape == (2, 10), (name, norm)


def test_every_model_builds_with_every_activation():
    import torch

    from classlab.config import ModelConfig
    from classlab.config.schema import ACTIVATIONS, MODELS
    from classlab.models import ACTIVATIONS as FACTORIES
    from classlab.models import build_model

    own = {"fastnet": torch.nn.GELU, "resnet18": torch.nn.ReLU, "resnet34": torch.nn.ReLU}
    x = torch.randn(2, 3, 32, 32)
    for name in MODELS:
        for act in ("auto", *ACTIVATIONS):
            model = build_model(ModelConfig(name=name, width=8, activation=act), 10)
            assert model(x).shape == (2, 10), (name, act)
            want = {own[name] if act == "auto" else FACTORIES[act]}
            if name == "fastnet":  # the GELU after the whitening layer stays the net's own
                assert isinstance(model.act, torch.nn.GELU)
                want.add(torch.nn.GELU)
            kinds = tuple(FACTORIES.values())
            acts = {type(m) for m in model.modules() if isinstance(m, kinds)}
            assert acts == want, (name, act, acts)


def test_the_auto_activation_is_the_named_one_bit_for_bit():
    """activation auto must keep every existing config's numbers: resnet auto == relu,
    fastnet auto == gelu, from the same seed; silu differs."""
    import torch

    from classlab.config import ModelConfig
    from classlab.models import build_model

    x = torch.randn(4, 3, 32, 32)
    for name, same in (("resnet18", "relu"), ("fastnet", "gelu")):
        out = {}
        for act in ("auto", same, "silu"):
            torch.manual_seed(0)
            out[act] = build_model(ModelConfig(name=name, width=8, activation=act), 10).eval()(x)
        assert torch.equal(out["auto"], out[same]), name
        assert not torch.allclose(out["auto"], out["silu"]), name


def test_every_optimizer_and_scheduler_builds_and_steps():
    import torch

    from classlab.config import OptimConfig, SchedConfig
    from classlab.config.schema import OPTIMIZERS, SCHEDULERS
    from classlab.optim import build_optimizer, build_scheduler

    for opt_name in OPTIMIZERS:
        for sched_name in SCHEDULERS:
            model = torch.nn.Linear(3, 2)
            opt = build_optimizer(model, OptimConfig(name=opt_name))
            stepper = build_scheduler(opt, SchedConfig(name=sched_name), epochs=2,
                                      steps_per_epoch=3)
            model(torch.ones(1, 3)).sum().backward()
            opt.step()
            stepper.after_batch()
            stepper.after_epoch({"train_loss": 1.0, "val_loss": 1.0, "val_acc": 50.0})


def test_every_augmentation_and_cam_method_runs():
    import torch

    from classlab.augment import AUGMENTATIONS, make_generator
    from classlab.config import AugConfig, ModelConfig
    from classlab.diagnose import CAMS, compute_cams
    from classlab.models import build_model

    x = torch.randn(4, 3, 32, 32)
    for name, fn in AUGMENTATIONS.items():
        out = fn(x, make_generator(0, "cpu"), AugConfig())
        assert out.shape == x.shape, name
    model = build_model(ModelConfig(width=4), 10)
    for method in CAMS:
        maps = compute_cams(model, x, ["layer2"], method)
        assert maps["layer2"].shape == (4, 32, 32), method


def test_unknown_norm_is_an_error_not_a_silent_groupnorm():
    # Before: an if-chain turned any name other than bn/ln into GroupNorm.
    from classlab.config import ModelConfig
    from classlab.models import norm_layer

    with pytest.raises(KeyError, match="model.norm: unknown value 'instance'; allowed: bn"):
        norm_layer(ModelConfig(norm="instance"))  # the dataclass itself does not validate
