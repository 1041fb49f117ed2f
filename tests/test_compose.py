"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker: the services
exist, share one image, keep database credentials away from the workers, and run commands that
this project actually has."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent  # the venv's bin, where the console scripts are

SERVICES = ("postgres", "redis", "web", "worker", "ingester", "beat")
APP_SERVICES = ("web", "worker", "ingester", "beat")
DJANGO_SERVICES = ("web", "ingester", "beat")
DATABASE_URL = "postgres://portal:portal@postgres:5432/portal"
# What a worker must never see: it holds no database credentials.
WORKER_FORBIDDEN = {"DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE"}
# What the test run (tests/conftest.py) puts in os.environ and a child process must not inherit.
INHERITED = WORKER_FORBIDDEN | {"DEBUG", "REDIS_URL", "ALLOWED_HOSTS"}
CHECK_ENV = {"DEBUG": "1", "DATABASE_URL": "sqlite:///:memory:"}


# --- reading the files ----------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def argvs(name: str) -> list[list[str]]:
    """The commands a service runs, one argv each; `sh -c "a && exec b"` gives [a, b]."""
    command = service(name).get("command")
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]
    if len(argv) == 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        steps = [shlex.split(step) for step in re.split(r"&&|;", argv[2]) if step.strip()]
        return [step[1:] if step[0] == "exec" else step for step in steps]
    return [argv]


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {shlex.join(argv)}"
    return argv[argv.index(flag) + 1]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def child_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in INHERITED}
    return {**env, **extra}


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


# --- what the commands need to exist ----------------------------------------------------------


@cache
def management_command_loads(name: str) -> subprocess.CompletedProcess:
    """`manage.py help NAME` imports the command's module: it fails for an unknown command."""
    return subprocess.run([sys.executable, "manage.py", "help", name], cwd=ROOT,
                          env=child_env(**CHECK_ENV), capture_output=True, text=True,
                          timeout=120)


@cache
def celery_app_in_worker_env(module: str) -> subprocess.CompletedProcess:
    """Import the Celery app the way a worker container would: with the worker's environment
    and nothing else, so no database URL, no secret and no Django settings."""
    code = (f"import celery, importlib; m = importlib.import_module({module!r}); "
            "assert isinstance(m.app, celery.Celery), type(m.app); print(m.app.main)")
    return run_python(code, child_env(**environment("worker")))


def module_defines(module: str, attribute: str) -> bool:
    """Whether the module's file assigns ATTRIBUTE at top level (read, not imported: importing
    portal.asgi needs settings)."""
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{module} is not a module of this project ({path} is missing)"
    tree = ast.parse(path.read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else [])
        if any(isinstance(target, ast.Name) and target.id == attribute for target in targets):
            return True
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == attribute:
            return True
    return False


def check_command_exists(name: str, argv: list[str]) -> None:
    program = Path(argv[0]).name
    if program.startswith("python") and argv[1:2] == ["manage.py"]:
        assert len(argv) >= 3, f"{name}: manage.py without a command"
        result = management_command_loads(argv[2])
        assert result.returncode == 0, (
            f"{name}: manage.py has no command {argv[2]!r}:\n{result.stderr[-2000:]}")
        assert f"manage.py {argv[2]}" in result.stdout
    elif program == "celery":
        assert (BIN / "celery").is_file(), f"the celery console script is not in {BIN}"
        module = option(argv, "-A")
        result = celery_app_in_worker_env(module)
        assert result.returncode == 0, (
            f"{name}: {module} does not import with the worker's environment:\n"
            f"{result.stderr[-2000:]}")
        assert result.stdout.strip() == "portal"
    elif program.startswith("python") and argv[1:3] == ["-m", "portal.web"]:
        # portal.web forks WEB_PROCESSES servers that run portal.server, daphne with the body
        # limits.
        assert "from portal.server import main as serve" in (ROOT / "portal" / "web.py").read_text()
        assert "class PortalCommandLine" in (ROOT / "portal" / "server.py").read_text()
        target = argv[-1]
        module, _, attribute = target.partition(":")
        assert attribute, f"{name}: daphne's last argument {target!r} is not module:attribute"
        assert module_defines(module, attribute), f"{name}: {module} defines no {attribute}"
    elif program == "redis-server":
        assert service(name).get("image", "").startswith("redis:"), (
            f"{name} runs redis-server from an image that is not Redis")
    else:
        pytest.fail(f"{name}: nothing checks that {shlex.join(argv)!r} exists")


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_defines_postgres_redis_web_worker_ingester_and_beat():
    assert set(SERVICES) <= set(compose()["services"])


def test_every_service_is_started_again_by_docker_when_it_dies():
    # What `make run`'s supervision does locally (see the README's "What restarts what").
    for name in SERVICES:
        assert service(name).get("restart") in {"unless-stopped", "always"}, name


def test_compose_uses_only_top_level_keys_that_compose_accepts():
    allowed = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
    unknown = {key for key in compose() if key not in allowed and not key.startswith("x-")}
    assert not unknown


def test_web_worker_ingester_and_beat_share_one_image_built_from_the_dockerfile():
    builds = {repr(service(name).get("build")) for name in APP_SERVICES}
    images = {service(name).get("image") for name in APP_SERVICES}
    assert len(builds) == 1 and len(images) == 1, (builds, images)
    build = service("web")["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                            "Dockerfile")
    assert (COMPOSE.parent / context / dockerfile_name).resolve() == DOCKERFILE
    assert images != {None}, "without a shared image name each service builds its own image"


def test_the_worker_gets_no_database_url_and_no_secret_key():
    worker = service("worker")
    assert not WORKER_FORBIDDEN & set(environment("worker"))
    assert "env_file" not in worker, "an env_file could hand the worker database credentials"
    assert environment("worker")["REDIS_URL"] == "redis://redis:6379/0"


def test_web_and_workers_share_the_jobs_files_and_artifacts():
    # Workers write what jobs produce; the web serves it: one volume, the same paths.
    for name in ("web", "worker"):
        env = environment(name)
        assert env["DATA_ROOT"] == "/data/files" and env["ARTIFACTS_DIR"] == "/data/artifacts"
        assert "jobdata:/data" in service(name).get("volumes", [])
    assert "jobdata" in compose()["volumes"]
    assert "/data/files /data/artifacts" in DOCKERFILE.read_text()  # owned by the app's user


@pytest.mark.parametrize("name", DJANGO_SERVICES)
def test_the_django_service_gets_the_database_redis_a_required_secret_and_allowed_hosts(name):
    env = environment(name)
    assert env["DATABASE_URL"] == DATABASE_URL
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert set(env["ALLOWED_HOSTS"].split(",")) == {"localhost", "127.0.0.1", "web"}
    secret = env["SECRET_KEY"]
    required = re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", secret)
    local_default = re.fullmatch(r"\$\{SECRET_KEY:-([^}]+)\}", secret)
    assert required or (local_default and "local" in local_default.group(1)), secret


def test_postgres_is_version_15_with_the_credentials_of_the_database_url_and_a_healthcheck():
    postgres = service("postgres")
    env = environment("postgres")
    assert postgres["image"] == "postgres:15"
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "portal", "portal", "portal")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_redis_7_keeps_nothing_on_disk():
    (argv,) = argvs("redis")
    assert service("redis")["image"] == "redis:7"
    assert option(argv, "--save") == ""
    assert option(argv, "--appendonly") == "no"


def test_web_migrates_the_database_and_then_serves_on_port_8000_with_daphne():
    migrate, serve = argvs("web")
    assert migrate[1:] == ["manage.py", "migrate", "--noinput"]
    # daphne, with request bodies limited as they arrive
    assert serve == ["python", "-m", "portal.web", "-b", "0.0.0.0", "-p", "8000",
                     "portal.asgi:application"]
    published = set()
    for port in service("web")["ports"]:
        if isinstance(port, dict):
            published.add((str(port.get("published")), str(port["target"])))
        else:
            published.add(tuple(str(port).split(":")[-2:]))
    assert ("8000", "8000") in published, published


def test_worker_consumes_every_queue_the_portal_dispatches_to():
    (argv,) = argvs("worker")
    assert argv[:4] == ["celery", "-A", "workers.celery", "worker"]
    result = run_python("from django.conf import settings; print(','.join(settings.JOB_QUEUES))",
                        child_env(DJANGO_SETTINGS_MODULE="portal.settings", **CHECK_ENV))
    assert result.returncode == 0, result.stderr
    assert option(argv, "-Q").split(",") == result.stdout.strip().split(",")
    assert option(argv, "-c") == "2" and option(argv, "-l") == "warning"
    assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)


def test_worker_replicas_get_distinct_node_names():
    # The portal names a node by the part of the Celery hostname before "@"
    # (workers.protocol.node_name), so that part must carry the container's hostname.
    (argv,) = argvs("worker")
    node, at, _ = option(argv, "-n").partition("@")
    assert at and re.search(r"%[hn]", node), node
    worker = service("worker")
    assert "container_name" not in worker and "hostname" not in worker, (
        "a fixed container name or hostname stops `--scale worker=3` giving distinct nodes")


def test_ingester_and_beat_run_the_ingest_and_reconcile_loops():
    assert [argv[1:] for argv in argvs("ingester")] == [["manage.py", "ingest"]]
    assert [argv[1:] for argv in argvs("beat")] == [["manage.py", "reconcile"]]


@pytest.mark.parametrize("name", [name for name in SERVICES if name != "postgres"])
def test_the_service_runs_only_commands_that_exist_in_the_project(name):
    commands = argvs(name)
    assert commands, f"{name} has no command"
    for argv in commands:
        check_command_exists(name, argv)


def test_every_dependency_and_named_volume_is_declared():
    services = compose()["services"]
    volumes = set(compose().get("volumes") or {})
    for name, spec in services.items():
        depends = spec.get("depends_on") or []
        assert set(depends) <= set(services), name
        if isinstance(depends, dict):
            for dependency, condition in depends.items():
                if condition.get("condition") == "service_healthy":
                    assert "healthcheck" in services[dependency], (name, dependency)
        for mount in spec.get("volumes") or []:
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in volumes, (name, source)


# --- Dockerfile and .dockerignore -----------------------------------------------------------


def test_the_dockerfile_builds_from_a_python_3_11_slim_image():
    bases = [args.split()[0] for keyword, args in dockerfile() if keyword == "FROM"]
    assert bases and bases[-1].startswith("python:3.11-slim"), bases


def test_the_image_runs_as_a_non_root_user():
    instructions = dockerfile()
    users = [i for i, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    assert users, "the image runs as root"
    last = users[-1]
    assert instructions[last][1].split(":")[0] not in {"root", "0"}
    assert all(keyword != "RUN" for keyword, _ in instructions[last + 1:]), (
        "a RUN after USER would need root anyway")


def test_the_image_installs_the_project_with_the_constraints():
    runs = " ".join(args for keyword, args in dockerfile() if keyword == "RUN")
    assert re.search(r"pip install [^&]*-c constraints\.txt", runs)
    assert re.search(r"pip install [^&]*\s(-e\s+)?\.(\s|$)", runs), "the project is not installed"


def test_collectstatic_runs_at_build_time_with_throwaway_settings_for_that_step_only():
    instructions = dockerfile()
    collect = [args for keyword, args in instructions
               if keyword == "RUN" and "collectstatic" in args]
    assert collect, "collectstatic does not run at build time"
    step = next(part for part in collect[0].split("&&") if "collectstatic" in part)
    assert "DEBUG=1" in step and "DATABASE_URL=sqlite:///:memory:" in step, step
    env_lines = " ".join(args for keyword, args in instructions if keyword in {"ENV", "ARG"})
    for name in ("DEBUG", "DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"):
        assert not re.search(rf"\b{name}[= ]", env_lines), f"the image sets {name} for good"
    assert not re.search(r"\bSERVE_STATIC=(0|false|no|off)\b", env_lines, re.IGNORECASE)


def test_the_build_context_leaves_out_the_venv_git_and_local_data():
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "data"} <= ignored, ignored
    assert "README.md" not in ignored, "pyproject.toml names README.md as the readme"
