"""The core install: the wheel, built from this tree and installed in a fresh venv without
the simulation extra, runs nat-stats, egress list and python -m egressgw; ships the
examples and deploy files; and a simulation command says how to get what it needs."""

from __future__ import annotations

import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SIM_ONLY = ("numba", "llvmlite", "matplotlib", "tqdm")


def run(argv: list[str], *, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel of this tree, core dependencies only."""
    work = tmp_path_factory.mktemp("core")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(ROOT)],
        cwd=work)
    [wheel] = work.glob("egressgw-*.whl")
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=work)
    yield work / "venv" / "bin"


def test_the_core_has_none_of_the_simulation_extra(core: Path, tmp_path: Path) -> None:
    code = f"import importlib.util as u; print([m for m in {SIM_ONLY!r} if u.find_spec(m)])"
    assert run([str(core / "python"), "-c", code], cwd=tmp_path).stdout.strip() == "[]"


def test_nat_stats_from_the_installed_examples(core: Path, tmp_path: Path) -> None:
    examples = Path(run([str(core / "egressgw"), "assets", "examples"], cwd=tmp_path)
                    .stdout.strip())
    assert examples.is_relative_to(core.parent)  # the installed copy, not this tree
    done = run([str(core / "egressgw"), "nat-stats", "--from",
                str(examples / "seed-node-nat-list.txt")], cwd=tmp_path)
    assert done.stdout == (GOLDEN / "seed-nat-stats.txt").read_text()


def test_egress_list_and_python_dash_m(core: Path, tmp_path: Path) -> None:
    examples = Path(run([str(core / "python"), "-m", "egressgw", "assets", "examples"],
                        cwd=tmp_path).stdout.strip())
    done = subprocess.run(
        [str(core / "python"), "-m", "egressgw", "egress", "list", "--policies",
         str(examples / "policies"), "--inventory", "-", "--inventory",
         str(examples / "kubernetes" / "gateway-interfaces.yaml")],
        input=(examples / "kubernetes" / "kubectl-get-nodes-pods.yaml").read_text(),
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    golden = ROOT / "tests" / "fixtures" / "policies" / "golden" / "lab.txt"
    assert done.stdout == golden.read_text()


def test_deploy_files_ship_in_the_wheel(core: Path, tmp_path: Path) -> None:
    deploy = Path(run([str(core / "egressgw"), "assets", "deploy"], cwd=tmp_path).stdout.strip())
    shipped = {p.relative_to(deploy).as_posix() for p in deploy.rglob("*") if p.is_file()}
    in_tree = {p.relative_to(ROOT / "deploy").as_posix()
               for p in (ROOT / "deploy").rglob("*") if p.is_file()}
    assert shipped == in_tree
    assert "kubernetes/daemonset.yaml" in shipped


@pytest.mark.parametrize("argv", [
    ["simulate", "{examples}/workloads/seed-scenario.yaml"],
    ["agent", "--policies", "{examples}/policies", "--inventory", "{examples}/inventory.yaml",
     "--node", "gateway-1", "--datapath", "model"],
], ids=["simulate", "agent-model"])
def test_a_simulation_command_says_how_to_install_it(core: Path, tmp_path: Path,
                                                     argv: list[str]) -> None:
    examples = run([str(core / "egressgw"), "assets", "examples"], cwd=tmp_path).stdout.strip()
    done = run([str(core / "egressgw"), *(a.format(examples=examples) for a in argv)],
               cwd=tmp_path, check=False)
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if not x[:4].isdigit()]  # skip log lines
    assert line.startswith(f"egressgw: error: {argv[0]} needs the simulation extra: "
                           "pip install 'egressgw[sim]'"), done.stderr
