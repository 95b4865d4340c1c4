"""The deploy/ files: they parse, set only real settings, validate against their schemas, and keep
the invariants production relies on (non-root image running `mailsvc serve`, complete compose
dependencies, TCP probes, NetworkPolicy, PDB, migration Job).

Offline validators: `kubernetes-validate` (Kubernetes API JSON schemas, strict) and
`check-jsonschema`'s bundled Compose Specification schema, both from the `dev` extra;
`docker-compose config` (Compose v1, from Debian's `docker-compose` package fetched into
`.tools-cache/` when not installed, no daemon needed); `kubectl kustomize` when kubectl is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsvc.settings import load_settings, parse_dsn, parse_duration
from tests.support.debian_tools import ToolUnavailable, docker_compose

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COLLECTOR_FILE = DEPLOY / "otel-collector.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# Standard OpenTelemetry SDK variables a deployment may set although .env.example does not list
# them (the SDK reads them itself; mailsvc passes no endpoint or resource of its own).
OTEL_ALLOWED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_RESOURCE_ATTRIBUTES",
}
# Kubernetes downward-API helpers: allowed only as `valueFrom.fieldRef`, to compose
# OTEL_RESOURCE_ATTRIBUTES (service.instance.id per pod).
DOWNWARD_HELPERS = {"K8S_POD_NAME", "K8S_NAMESPACE", "K8S_NODE_NAME"}
# Kubernetes versions the manifests must validate against: an older supported one and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.29", "latest")


# --------------------------------------------------------------------------------------------
# helpers


@cache
def env_example_names() -> frozenset[str]:
    """Every variable .env.example documents, set (`NAME=`) or commented out (`# NAME=`)."""
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), flags=re.MULTILINE)
    return frozenset(names)


def is_known_setting(name: str) -> bool:
    return name in env_example_names() or name in OTEL_ALLOWED


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_docs(path)
    assert len(docs) == 1, path
    return docs[0]


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


# ---- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


@cache
def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the instructions of each stage (the stage's FROM first)."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([(keyword, rest)])
        elif stages:
            stages[-1].append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
    return global_args, stages


def exec_form(rest: str) -> list[str]:
    """ENTRYPOINT/CMD arguments: the JSON exec form, or the shell form as `sh -c`."""
    if rest.startswith("["):
        value = json.loads(rest)
        assert isinstance(value, list)
        return [str(item) for item in value]
    return ["/bin/sh", "-c", rest]


def last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    values = [rest for kw, rest in stage if kw == keyword]
    return values[-1] if values else None


@cache
def image_entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    final = dockerfile_stages()[1][-1]
    entrypoint, cmd = last(final, "ENTRYPOINT"), last(final, "CMD")
    return (exec_form(entrypoint) if entrypoint else []), (exec_form(cmd) if cmd else [])


def resolve_command(entrypoint: list[str] | None, command: list[str] | None) -> list[str]:
    """What a container of the image runs, given its overrides (Docker/Kubernetes semantics:
    overriding the entrypoint drops the image's CMD)."""
    image_entrypoint, image_cmd = image_entrypoint_and_cmd()
    if entrypoint is not None:
        return entrypoint + (command or [])
    return image_entrypoint + (command if command is not None else image_cmd)


def dockerignore_excludes(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` out of the build context (Docker's matcher: a pattern
    matches the path or one of its parent folders, `**` spans folders, the last match wins)."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


# ---- compose

INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3) or ""
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        return env.get(name, "")

    return INTERPOLATION.sub(replace, value)


@cache
def compose() -> dict[str, Any]:
    return load_one(COMPOSE_FILE)


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, interpolated with compose's defaults (an empty shell)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): interpolate(str(v if v is not None else ""), {}) for k, v in raw.items()}


def as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def is_mailsvc_service(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("deploy/Dockerfile")


def compose_command(service: Mapping[str, Any]) -> list[str]:
    return resolve_command(as_list(service.get("entrypoint")), as_list(service.get("command")))


def replicas() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose_services().items()
        if is_mailsvc_service(svc) and compose_command(svc) == ["mailsvc", "serve"]
    }


# ---- kubernetes


@cache
def kustomization() -> dict[str, Any]:
    return load_one(K8S / "kustomization.yaml")


@cache
def manifests() -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs.extend(load_docs(K8S / name))
    return tuple(docs)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def the(kind: str) -> dict[str, Any]:
    docs = of_kind(kind)
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec(workload)["containers"])


def k8s_command(container: Mapping[str, Any]) -> list[str]:
    return resolve_command(container.get("command"), container.get("args"))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_env_names(container: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for item in container.get("env") or []:
        yield item["name"], item


def deployment_env() -> dict[str, str]:
    """What the Deployment's container sees: ConfigMap and Secret (envFrom) plus literal `env`."""
    env: dict[str, str] = {}
    config_maps = {doc["metadata"]["name"]: doc for doc in of_kind("ConfigMap")}
    secrets = {doc["metadata"]["name"]: doc for doc in of_kind("Secret")}
    (container,) = containers(the("Deployment"))
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]].get("data") or {})
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]].get("stringData") or {})
    for name, item in container_env_names(container):
        if "value" in item:
            env[name] = str(item["value"])
    return env


# --------------------------------------------------------------------------------------------
# every file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_env_example_parser_sees_every_documented_variable() -> None:
    names = env_example_names()
    assert {"MAIL_POSTGRES_PRIMARY_DSN", "MAIL_SMTP_TLS", "OTEL_TRACES_EXPORTER"} <= names
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in names  # documented as a commented-out line


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2, "builder and runtime stages"
    images = []
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), image)
        images.append(image)
    assert all(image.startswith("python:3.11-slim") for image in images), images
    # the venv copied from the builder points at the base image's interpreter: same base
    assert images[0] == images[-1]
    assert any("--from=builder" in rest and "/opt/venv" in rest for kw, rest in stages[-1] if kw == "COPY")


def test_dockerfile_final_stage_runs_as_a_fixed_non_root_user() -> None:
    final = dockerfile_stages()[1][-1]
    user = last(final, "USER")
    assert user, "the final stage sets USER"
    uid = user.split(":")[0]
    assert uid not in {"root", "0"}
    assert uid.isdigit(), "a numeric uid, so Kubernetes' runAsNonRoot can verify it"
    assert int(uid) == pod_spec(the("Deployment"))["securityContext"]["runAsUser"]
    # USER comes after every RUN: nothing runs as root afterwards
    keywords = [kw for kw, _ in final]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_image_command_is_mailsvc_serve() -> None:
    assert resolve_command(None, None) == ["mailsvc", "serve"]


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    final = dockerfile_stages()[1][-1]
    run_text = " ".join(rest for kw, rest in final if kw == "RUN")
    forbidden = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3?-dev|libpq-dev|pip install)\b")
    assert not forbidden.search(run_text), forbidden.search(run_text)
    assert not re.search(r"\b(apt-get|apt|apk)\b[^&;]*\binstall\b", run_text), "no package installs at all"
    # the builder keeps no pip cache in its layers either
    builder = dockerfile_stages()[1][0]
    env_text = " ".join(rest for kw, rest in builder if kw == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env_text


def test_dockerfile_runtime_settings() -> None:
    final = dockerfile_stages()[1][-1]
    env_text = " ".join(rest for kw, rest in final if kw == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env_text
    assert "PYTHONUNBUFFERED=1" in env_text
    assert last(final, "EXPOSE") == "8080"
    assert last(final, "STOPSIGNAL") == "SIGTERM"
    workdir = last(final, "WORKDIR")
    assert workdir, "a working directory holding migrations/ and templates/"
    copies = [rest.split() for kw, rest in final if kw == "COPY" and "--from" not in rest]
    # migrations_dir() and the default MAIL_TEMPLATE_DIR=./templates look in the working directory
    assert ["migrations", "./migrations"] in copies
    assert ["templates", "./templates"] in copies
    assert workdir.endswith("/app")


def test_docker_build_context_sends_what_the_image_copies_and_nothing_private() -> None:
    for stage in dockerfile_stages()[1]:
        for keyword, rest in stage:
            if keyword != "COPY" or "--from" in rest:
                continue
            for source in [arg for arg in rest.split() if not arg.startswith("--")][:-1]:
                assert (REPO / source).exists(), source
                assert not dockerignore_excludes(source), f"{source} is excluded by .dockerignore"
    for private in [
        ".venv/bin/python",
        ".git/config",
        ".env",
        ".mailsvc-dev/pg/PG_VERSION",
        ".pytest_cache/v",
        ".mypy_cache/3.11",
        ".ruff_cache/x",
        "tests/unit/test_deploy.py",
        "mailsvc/__pycache__/cli.cpython-311.pyc",
        "mailsvc.egg-info/PKG-INFO",
        "templates/auth.login_code/x.eml",
    ]:
        assert dockerignore_excludes(private), f"{private} would be sent to the builder"
    assert not dockerignore_excludes("mailsvc/adapters/postgres/migrations.py")


# --------------------------------------------------------------------------------------------
# docker compose


def test_compose_has_every_service() -> None:
    services = compose_services()
    assert {"postgres", "redis", "mailpit", "otel-collector", "migrate"} <= set(services)
    assert set(replicas()) == {"mailsvc-1", "mailsvc-2"}
    assert compose_command(services["migrate"]) == ["mailsvc", "migrate"]
    assert is_mailsvc_service(services["migrate"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "mailpit" in services["mailpit"]["image"]
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib")


def test_compose_mailsvc_services_share_one_image() -> None:
    images = {svc["image"] for svc in compose_services().values() if is_mailsvc_service(svc)}
    assert len(images) == 1


def test_compose_dependencies_are_complete() -> None:
    services = compose_services()
    for name, replica in replicas().items():
        depends = replica["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert {"mailpit", "otel-collector"} <= set(depends), name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # service_healthy needs a healthcheck
    assert "pg_isready" in json.dumps(services["postgres"]["healthcheck"]["test"])
    assert "ping" in json.dumps(services["redis"]["healthcheck"]["test"])
    # a one-shot: never restarted after it exits
    assert services["migrate"].get("restart", "no") == "no"


def test_compose_sets_only_real_settings() -> None:
    for name, service in compose_services().items():
        if not is_mailsvc_service(service):
            continue  # postgres, redis, … take their own images' variables
        unknown = sorted(n for n in compose_env(service) if not is_known_setting(n))
        assert not unknown, f"{name} sets variables mailsvc does not read: {unknown}"


def test_compose_replica_environment_is_a_valid_configuration() -> None:
    services = compose_services()
    instance_ids = set()
    for name, replica in replicas().items():
        env = compose_env(replica)
        settings = load_settings(env, dotenv=None)  # raises SettingsError listing every problem
        assert settings.smtp.mode == "smtp"
        assert env["MAIL_SMTP_ADDR"] == "mailpit:1025"
        assert settings.smtp.tls == "none"  # mailpit offers no TLS; `auto` would require STARTTLS
        assert settings.smtp.from_email
        assert settings.http.intake_tokens
        assert settings.http.operator_tokens
        assert settings.http.addr.port == 8080
        assert settings.telemetry.traces_exporter == "otlp"
        assert settings.telemetry.metrics_exporter == "otlp"
        assert settings.telemetry.otlp_protocol == "http/protobuf"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert settings.redis.master_addr.host == "redis"
        assert "@postgres:5432/" in settings.postgres.primary_dsn.reveal()
        grace = parse_duration(replica["stop_grace_period"])
        assert grace > settings.process.shutdown_timeout, f"{name}: stop_grace_period too short"
        instance_ids.add(env.get("OTEL_RESOURCE_ATTRIBUTES"))
    assert len(instance_ids) == len(replicas()), "each replica has its own service.instance.id"
    migrate_env = compose_env(services["migrate"])
    assert parse_dsn(migrate_env["MAIL_POSTGRES_PRIMARY_DSN"])
    assert migrate_env["MAIL_POSTGRES_PRIMARY_DSN"] == compose_env(services["mailsvc-1"])["MAIL_POSTGRES_PRIMARY_DSN"]


def test_compose_redis_runs_without_persistence() -> None:
    command = as_list(compose_services()["redis"]["command"]) or []
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"


def test_compose_wires_mailpit_and_the_collector() -> None:
    services = compose_services()
    mailpit_ports = " ".join(str(p) for p in services["mailpit"]["ports"])
    assert ":8025" in mailpit_ports
    assert ":1025" in mailpit_ports
    volumes = [str(v) for v in services["otel-collector"]["volumes"]]
    assert any(v.split(":")[0] == "./otel-collector.yaml" for v in volumes), volumes


def test_compose_validates_against_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    try:
        command = docker_compose(REPO / ".tools-cache")
    except ToolUnavailable as exc:
        pytest.skip(f"docker-compose unavailable (Debian's docker-compose package): {exc}")
    # an empty environment, env file and home: the file's own defaults, nothing of this machine's
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    (tmp_path / "empty.env").write_text("")
    result = subprocess.run(
        [*command, "--env-file", str(tmp_path / "empty.env"), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# OpenTelemetry Collector


def test_collector_config_receives_otlp_and_has_the_pipelines() -> None:
    config = load_one(COLLECTOR_FILE)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics", "logs"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        assert "otlp" in pipeline["receivers"], name
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter first"
        assert "batch" in pipeline["processors"], name
        assert pipeline["exporters"], name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{name} uses undefined {kind[:-1]} {component}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


# --------------------------------------------------------------------------------------------
# Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def manifest_params() -> list[Any]:
    return [
        pytest.param(doc, id=f"{doc['kind']}/{doc['metadata']['name']}")
        for name in load_one(K8S / "kustomization.yaml")["resources"]
        for doc in load_docs(K8S / name)
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", manifest_params())
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed"
    )
    target = kubernetes_validate.latest_version() if version == "latest" else version
    try:
        kubernetes_validate.validate(doc, target, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {error.message}")


def test_deployment_runs_two_or_more_replicas_of_mailsvc_serve() -> None:
    deployment = the("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = containers(deployment)
    assert k8s_command(container) == ["mailsvc", "serve"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(match)


def test_deployment_probes_are_tcp_on_8080() -> None:
    (container,) = containers(the("Deployment"))
    assert {p["containerPort"] for p in container["ports"]} == {8080}
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container, probe
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            continue
        spec = container[probe]
        assert set(spec) & {"httpGet", "exec", "grpc"} == set(), f"{probe}: the service has no health routes"
        assert container_port(container, spec["tcpSocket"]["port"]) == 8080, probe


def test_deployment_runs_non_root_with_a_read_only_root_filesystem() -> None:
    deployment = the("Deployment")
    pod = pod_spec(deployment)
    (container,) = containers(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod.get("automountServiceAccountToken") is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_deployment_drains_within_its_grace_period() -> None:
    deployment = the("Deployment")
    (container,) = containers(deployment)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert sleep_s > 0
    shutdown = parse_duration(deployment_env().get("MAIL_SHUTDOWN_TIMEOUT", "30s")).total_seconds()
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > sleep_s + shutdown, "running attempts would be killed before MAIL_SHUTDOWN_TIMEOUT"


def test_deployment_spreads_replicas_across_nodes() -> None:
    deployment = the("Deployment")
    pod = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    by_node = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname" and selects(c["labelSelector"]["matchLabels"], labels)
    ]
    anti = pod.get("affinity", {}).get("podAntiAffinity")
    assert by_node or anti, "replicas must not all land on one node"


def test_every_env_from_reference_exists() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests()}
    for workload in [the("Deployment"), the("Job")]:
        for container in containers(workload):
            refs = container.get("envFrom") or []
            assert refs, f"{workload['kind']}: settings come from the ConfigMap and the Secret"
            kinds = set()
            for ref in refs:
                if "configMapRef" in ref:
                    kinds.add("ConfigMap")
                    assert ("ConfigMap", ref["configMapRef"]["name"]) in names
                if "secretRef" in ref:
                    kinds.add("Secret")
                    assert ("Secret", ref["secretRef"]["name"]) in names
            assert kinds == {"ConfigMap", "Secret"}, workload["kind"]


def test_kubernetes_sets_only_real_settings() -> None:
    for doc in of_kind("ConfigMap"):
        unknown = sorted(n for n in doc.get("data", {}) if not is_known_setting(n))
        assert not unknown, f"ConfigMap {doc['metadata']['name']}: {unknown}"
    for doc in of_kind("Secret"):
        keys = {**doc.get("data", {}), **doc.get("stringData", {})}
        unknown = sorted(n for n in keys if not is_known_setting(n))
        assert not unknown, f"Secret {doc['metadata']['name']}: {unknown}"
    for workload in [the("Deployment"), the("Job")]:
        for container in containers(workload):
            for name, item in container_env_names(container):
                if name in DOWNWARD_HELPERS:
                    assert "fieldRef" in item.get("valueFrom", {}), f"{name} only carries pod metadata"
                    continue
                assert is_known_setting(name), f"{workload['kind']} sets {name}, which mailsvc does not read"


def test_secrets_live_in_the_secret_and_only_as_placeholders() -> None:
    secret_names = {
        "MAIL_POSTGRES_PRIMARY_DSN",
        "MAIL_REDIS_PASSWORD",
        "MAIL_SMTP_PASSWORD",
        "MAIL_INTERNAL_HTTP_INTAKE_TOKENS",
        "MAIL_INTERNAL_HTTP_OPERATOR_TOKENS",
        "MAIL_IDEMPOTENCY_HASH_KEY",
    }
    secret = the("Secret")
    assert "data" not in secret, "a template: readable stringData only"
    assert secret_names <= set(secret["stringData"])
    for name, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{name} must be an obvious placeholder"
    config = the("ConfigMap")["data"]
    leaked = sorted(n for n in config if re.search(r"PASSWORD|TOKENS|DSN|KEY", n))
    assert not leaked, f"secrets in the ConfigMap: {leaked}"


def test_kubernetes_environment_is_a_valid_configuration() -> None:
    settings = load_settings(deployment_env(), dotenv=None)  # raises SettingsError listing every problem
    assert settings.http.addr.port == 8080
    assert settings.smtp.mode == "smtp"
    assert settings.smtp.tls in {"auto", "starttls", "implicit"}, "production never sends mail in plaintext"
    assert settings.smtp.insecure_skip_verify is False
    assert settings.telemetry.traces_exporter == "otlp"
    assert settings.telemetry.metrics_exporter == "otlp"
    attributes = deployment_env()["OTEL_RESOURCE_ATTRIBUTES"]
    assert "service.instance.id=$(K8S_POD_NAME)" in attributes


def test_service_is_cluster_ip_on_8080_selecting_the_deployment() -> None:
    service, deployment = the("Service"), the("Deployment")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    (container,) = containers(deployment)
    assert container_port(container, port.get("targetPort", port["port"])) == 8080
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


def test_network_policy_admits_only_the_named_callers_on_8080() -> None:
    policy, deployment = the("NetworkPolicy"), the("Deployment")
    spec = policy["spec"]
    assert selects(spec["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert "Ingress" in spec["policyTypes"]
    callers = []
    assert spec["ingress"], "an empty ingress list would deny everything, a missing one would be a mistake"
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": 8080}], rule
        assert rule.get("from"), "no rule may admit every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            assert peer["podSelector"]["matchLabels"], "callers are named by pod labels"
            callers.append(peer["podSelector"]["matchLabels"])
    assert {"app.kubernetes.io/name": "auth-service"} in callers
    assert {"mailsvc-access": "operator"} in callers


def test_network_policy_egress_reaches_exactly_the_dependencies() -> None:
    spec = the("NetworkPolicy")["spec"]
    assert "Egress" in spec["policyTypes"]
    ports = {(p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    expected = {
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 5432),
        ("TCP", 6379),
        ("TCP", 25),
        ("TCP", 465),
        ("TCP", 587),
        ("TCP", 4317),
        ("TCP", 4318),
    }
    assert ports == expected


def test_pod_disruption_budget_keeps_one_replica() -> None:
    pdb, deployment = the("PodDisruptionBudget"), the("Deployment")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], "drains must stay possible"
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_migration_job_runs_mailsvc_migrate() -> None:
    job, deployment = the("Job"), the("Deployment")
    (container,) = containers(job)
    assert k8s_command(container) == ["mailsvc", "migrate"]
    (server,) = containers(deployment)
    assert container["image"] == server["image"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = pod_spec(job)
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the migration pod is neither served by the Service nor counted by the PDB
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selects(the("Service")["spec"]["selector"], job_labels)
    assert not selects(the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], job_labels)


def test_kubectl_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: `kubectl kustomize` cannot run")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(doc["kind"] for doc in rendered) == sorted(doc["kind"] for doc in manifests())
    namespace = kustomization()["namespace"]
    assert all(doc["metadata"].get("namespace") == namespace for doc in rendered if doc["kind"] != "Namespace")
