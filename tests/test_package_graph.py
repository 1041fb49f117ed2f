"""The packages form a tree, not a circle: workers at the bottom (no Django), then common,
audit, accounts, nodes, jobs, alerts and schedules, with portal (settings, URLs, ASGI, the
reconciler, the local cluster) on top. Every import counts, those inside functions too."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["portal", "common", "spaces", "usage", "jobs", "nodes", "accounts", "workers",
            "alerts", "schedules", "audit", "cli"]


def imports_between_packages() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in graph and top != package:
                        graph[package].add(top)
    return graph


def test_no_package_imports_one_that_imports_it_back_however_far_round():
    graph = imports_between_packages()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        raise AssertionError(f"import circle: {' -> '.join(cycle.args[1])}") from None
    assert set(order) == set(PACKAGES)


def test_the_workers_need_nothing_of_the_portal():
    assert imports_between_packages()["workers"] == set()


def test_the_check_sees_a_circle_when_there_is_one():
    graph = imports_between_packages()
    graph["workers"].add("jobs")
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("a circle went unseen")


def test_nodes_sit_below_jobs():
    """Jobs are placed on nodes, so jobs import nodes; what nodes need of jobs (the attempts a
    node's page lists, the outbox of the dashboards' streams) the jobs app hands them."""
    graph = imports_between_packages()
    assert "nodes" in graph["jobs"] and "jobs" not in graph["nodes"]
