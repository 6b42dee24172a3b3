"""docker-compose.yaml and Dockerfile, checked without a Docker engine.

`docker-compose config` (Debian's 1.29.2, from packages.txt) validates the file against its
schema and renders it with the variables interpolated and the YAML anchors merged; the tests read
that rendering and check what the deployment relies on: the services, one shared configuration for
every Airflow component (executor, database, broker, secrets, execution API), the read-only raw
archive, the pools, health checks and start-up order, the published ports. The airflow-init script
is run for real against a stub `airflow`. The Dockerfile is checked statically (base image against
the lock, COPY sources, Debian packages). Nothing here builds or starts a container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
    "airflow-cli",
    "flower",
}
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init"}
PROFILES = {"airflow-cli": ["debug"], "flower": ["flower"]}
ONE_SHOT = {"airflow-init", "minio-init", "airflow-cli"}
# Test values of the required variables (never real secrets): distinct, to follow each one.
SECRETS = {
    "AIRFLOW_FERNET_KEY": "dGVzdC1mZXJuZXQta2V5LW5vdC1hLXJlYWwtc2VjcmV0IQ==",
    "AIRFLOW_JWT_SECRET": "test-jwt-secret",
    "AIRFLOW_API_SECRET_KEY": "test-api-secret-key",
    "AIRFLOW_ADMIN_PASSWORD": "test-admin-password",
    "POSTGRES_PASSWORD": "testpgpassword",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
}
# Must be one value across every Airflow component.
SHARED_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__AUTH_MANAGER": (
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    ),
    "AIRFLOW__CORE__FERNET_KEY": SECRETS["AIRFLOW_FERNET_KEY"],
    "AIRFLOW__API_AUTH__JWT_SECRET": SECRETS["AIRFLOW_JWT_SECRET"],
    "AIRFLOW__API__SECRET_KEY": SECRETS["AIRFLOW_API_SECRET_KEY"],
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
        f"postgresql+psycopg2://airflow:{SECRETS['POSTGRES_PASSWORD']}@postgres/airflow"
    ),
    "AIRFLOW__CELERY__RESULT_BACKEND": (
        f"db+postgresql://airflow:{SECRETS['POSTGRES_PASSWORD']}@postgres/airflow"
    ),
    "AIRFLOW__CELERY__BROKER_URL": "redis://:@redis:6379/0",
    "AR_RAW_ROOT": "/data/raw",
    "AR_PRODUCTS_ROOT": "s3://products",
}
# Debian packages the host needs but the image does not (packages.txt lists both kinds).
HOST_ONLY_PACKAGES = {"postgresql-15", "redis-server", "docker-compose", "chromium"}  # tests only


# --- rendering ------------------------------------------------------------------------------


def compose(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker-compose -f docker-compose.yaml ARGS` in an environment holding only PATH, HOME and
    `env`, reading an empty env file instead of any .env in the repository."""
    binary = shutil.which("docker-compose")
    assert binary, (
        "docker-compose not found: it comes with packages.txt (Debian's docker-compose 1.29.2); "
        "run `make install`"
    )
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env}
    base = [binary, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO)]
    return subprocess.run(
        [*base, "--env-file", str(env_file), *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def render(env: dict[str, str], tmp_path: Path) -> dict:
    result = compose(["config"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The file rendered with the required variables only (every default in force)."""
    return render(SECRETS, tmp_path_factory.mktemp("compose"))


def env_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, short or long syntax."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append(
                (volume.get("source", ""), volume["target"], bool(volume.get("read_only")))
            )
        else:
            parts = volume.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            result.append((parts[0], parts[1], "ro" in mode.split(",")))
    return result


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of each published port, short or long syntax."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
        else:
            spec = str(port).split("/")[0]
            parts = spec.split(":")
            if len(parts) == 2:
                parts.insert(0, "")
            result.append((parts[0], parts[1], parts[2]))
    return result


def unescape(text: str) -> str:
    """A command as the container's shell gets it (compose writes a literal $ as $$)."""
    return text.replace("$$", "$")


def required_variables() -> set[str]:
    """The secrets .env.example leaves empty for the operator to fill in."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=\s*$", text, re.MULTILINE))


def env_sh_pools() -> str:
    text = (REPO / "scripts" / "airflow-env.sh").read_text()
    match = re.search(r'^export AR_POOLS="([^"]+)"', text, re.MULTILINE)
    assert match, "AR_POOLS not found in scripts/airflow-env.sh"
    return match.group(1)


# --- the Dockerfile, statically -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def lock_pin(name: str) -> str:
    text = (REPO / "requirements.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)", text, re.MULTILINE)
    assert match, f"{name} is not pinned in requirements.txt"
    return match.group(1)


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip().lstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        assert not pattern.startswith("!"), "update dockerignored() for exceptions"
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch(candidate.split("/")[-1], bare)
            ):
                return True
    return False


def test_base_image_is_the_locked_airflow_on_the_locked_python() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"apache/airflow:(?:slim-)?(\d+\.\d+\.\d+)-python(\d+\.\d+)", froms[0])
    assert match, f"FROM {froms[0]}: expected apache/airflow:[slim-]X.Y.Z-pythonA.B"
    assert match.group(1) == lock_pin("apache-airflow")
    header = (REPO / "requirements.txt").read_text()
    python = re.search(r"--python-version (\d+\.\d+)", header)
    assert python, "requirements.txt does not say which Python it was compiled for"
    assert match.group(2) == python.group(1)


def test_dockerfile_installs_the_lock_the_project_and_the_dags() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(
        r'pip install [^&]*"apache-airflow==\$\{AIRFLOW_VERSION\}" -r \S*requirements', runs
    )
    assert re.search(r"pip install [^&]*--no-deps", runs), "the project must not pull other deps"
    copies = [args.split() for keyword, args in instructions if keyword == "COPY"]
    targets = {}
    for words in copies:
        sources = [w for w in words[:-1] if not w.startswith("--")]
        assert sources, words
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
            targets[source.rstrip("/")] = words[-1]
    for needed in ("requirements.txt", "pyproject.toml", "ar_tasks", "include"):
        assert needed in targets, f"the image needs {needed}"
    assert targets["dags"] == "/opt/airflow/dags"
    assert targets["plugins"] == "/opt/airflow/plugins"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users[-1] == "airflow", "the image must not end as root"


def test_image_has_the_science_tools_of_packages_txt() -> None:
    wanted = {
        line.strip()
        for line in (REPO / "packages.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    } - HOST_ONLY_PACKAGES
    assert {"source-extractor", "psfex", "scamp", "astrometry.net", "fitsverify"} <= wanted
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    installs = re.findall(r"apt-get install ([^&;]+)", runs)
    assert installs, "no apt-get install in the Dockerfile"
    words = {w for chunk in installs for w in shlex.split(chunk) if not w.startswith("-")}
    assert wanted <= words, f"missing from the image: {sorted(wanted - words)}"
    assert "--no-install-recommends" in runs and "rm -rf /var/lib/apt/lists" in runs


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build_context() -> None:
    for path in (".env", ".git", ".venv", "demo_data/raw", "bench/work", "build", "x/__pycache__"):
        assert dockerignored(path), f"{path} would be sent to the Docker daemon"


# --- the compose file -----------------------------------------------------------------------


def test_compose_file_validates(tmp_path: Path) -> None:
    result = compose(["config", "-q"], SECRETS, tmp_path)
    assert result.returncode == 0, result.stderr


def test_required_secrets_are_exactly_the_empty_lines_of_env_example(tmp_path: Path) -> None:
    required = required_variables()
    assert required == set(SECRETS)
    text = COMPOSE_FILE.read_text()
    for name in required:
        uses = re.findall(rf"(?<!\$)\$\{{{name}(:?[-?]?)", text)
        assert uses and all(op == ":?" for op in uses), f"{name} must be required, never defaulted"
        result = compose(
            ["config", "-q"], {k: v for k, v in SECRETS.items() if k != name}, tmp_path
        )
        assert result.returncode != 0 and name in result.stderr, (name, result.stderr)


def test_env_example_states_the_defaults_of_the_compose_file() -> None:
    documented = dict(
        re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.+)$", (REPO / ".env.example").read_text(), re.M)
    )
    assert len(documented) >= 15, documented
    text = COMPOSE_FILE.read_text()
    for name, value in documented.items():
        defaults = set(re.findall(rf"(?<!\$)\$\{{{name}:-([^}}]*)\}}", text))
        assert defaults == {value.strip()}, (name, value, defaults)


def test_services_and_profiles(config: dict) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("profiles", []) == PROFILES.get(name, []), name
    built = {name for name, service in services.items() if "build" in service}
    assert built == AIRFLOW_SERVICES
    images = {services[name]["image"] for name in AIRFLOW_SERVICES}
    assert len(images) == 1, images
    for name in AIRFLOW_SERVICES:
        build = services[name]["build"]
        assert (
            Path(build["context"]) == REPO and build.get("dockerfile", "Dockerfile") == "Dockerfile"
        )


def test_every_airflow_component_shares_one_configuration(config: dict) -> None:
    services = config["services"]
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        for key, value in SHARED_SETTINGS.items():
            assert env.get(key) == value, (name, key, env.get(key))
        assert "fab" not in env.get("AIRFLOW__CORE__AUTH_MANAGER", "").lower()
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    # The URLs name services of this file, on the ports those services listen on.
    execution = urlsplit(SHARED_SETTINGS["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution.hostname == "airflow-apiserver" and execution.port == 8080
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert env_of(services["postgres"])["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert urlsplit(SHARED_SETTINGS["AIRFLOW__CELERY__BROKER_URL"]).hostname in services


def test_aws_default_connection_is_minio_with_its_credentials(config: dict) -> None:
    services = config["services"]
    minio = env_of(services["minio"])
    for name in AIRFLOW_SERVICES:
        conn = json.loads(env_of(services[name])["AIRFLOW_CONN_AWS_DEFAULT"])
        assert conn["conn_type"] == "aws"
        assert (conn["login"], conn["password"]) == (
            minio["MINIO_ROOT_USER"],
            minio["MINIO_ROOT_PASSWORD"],
        )
        endpoint = urlsplit(conn["extra"]["endpoint_url"])
        assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
    init = unescape(" ".join(services["minio-init"]["command"]))
    assert "mc mb --ignore-existing local/raw local/products" in init
    bucket = urlsplit(SHARED_SETTINGS["AR_PRODUCTS_ROOT"]).hostname
    assert f"local/{bucket}" in init, "the default products bucket is not created"


def test_raw_archive_is_mounted_read_only_where_the_dag_looks(config: dict) -> None:
    for name in AIRFLOW_SERVICES:
        raw = [m for m in mounts(config["services"][name]) if m[1] == "/data/raw"]
        assert len(raw) == 1, (name, raw)
        source, _, read_only = raw[0]
        assert read_only, f"{name}: the raw archive must be mounted read-only"
        assert Path(source) == REPO / "demo_data" / "raw"
        assert env_of(config["services"][name])["AR_RAW_ROOT"] == "/data/raw"
    for name, service in config["services"].items():
        for source, target, read_only in mounts(service):
            if "raw" in Path(source).parts:
                assert read_only, (name, source, target)


def test_airflow_init_creates_the_pools_of_airflow_env_sh(config: dict) -> None:
    init = config["services"]["airflow-init"]
    assert env_of(init)["AR_POOLS"] == env_sh_pools()
    names = {spec.split(":")[0] for spec in env_sh_pools().split(";")}
    dag_pools = set()
    for dag in (REPO / "dags").glob("*.py"):
        dag_pools |= set(re.findall(r"""pool\s*=\s*["']([\w.-]+)["']""", dag.read_text()))
    assert "astrometry" in dag_pools and dag_pools <= names, (dag_pools, names)


def test_airflow_init_script_migrates_creates_pools_and_the_login(config: dict, tmp_path) -> None:
    """Run the init command itself, with a stub `airflow` that records its arguments."""
    init = config["services"]["airflow-init"]
    command = init["command"]
    assert command[:2] == ["bash", "-c"], command
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "airflow_calls.jsonl"
    stub = stubs / "airflow"
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    (stubs / "python").symlink_to(sys.executable)
    passwords = tmp_path / "passwords.json"
    env = env_of(init) | {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    result = subprocess.run(
        ["bash", "-c", unescape(command[2])], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert ["db", "migrate"] in recorded
    pool_calls = [c for c in recorded if c[:2] == ["pools", "set"]]
    expected = [["pools", "set", *spec.split(":", 2)] for spec in env_sh_pools().split(";")]
    assert pool_calls == expected
    assert recorded.index(["db", "migrate"]) < recorded.index(pool_calls[0])
    assert json.loads(passwords.read_text()) == {"admin": SECRETS["AIRFLOW_ADMIN_PASSWORD"]}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.glob("passwords*")) == ["passwords.json"]
    # The api-server reads that file from the same volume.
    api = config["services"]["airflow-apiserver"]
    file_dir = str(Path(env_of(api)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent)
    volume_of = {
        name: {t: s for s, t, _ in mounts(config["services"][name])} for name in config["services"]
    }
    assert volume_of["airflow-init"][file_dir] == volume_of["airflow-apiserver"][file_dir]
    assert volume_of["airflow-init"][file_dir] in config["volumes"]
    assert file_dir not in volume_of["airflow-worker"], "workers have no business with the logins"


def test_health_checks_and_start_order(config: dict) -> None:
    services = config["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert "restart" not in service, f"{name} runs once"
        else:
            assert service.get("restart") and service.get("healthcheck"), name
        for target, rule in (service.get("depends_on") or {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), (name, target)
            else:
                assert condition == "service_completed_successfully" and target in ONE_SHOT
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        for backend in ("postgres", "redis"):
            assert depends[backend]["condition"] == "service_healthy", (name, backend)
        if name not in {"airflow-init", "airflow-cli"}:
            assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    worker = services["airflow-worker"]["depends_on"]
    assert worker["airflow-apiserver"]["condition"] == "service_healthy"
    assert worker["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"

    def probe(name: str) -> str:
        return unescape(" ".join(services[name]["healthcheck"]["test"]))

    assert "http://localhost:8080/api/v2/monitor/health" in probe("airflow-apiserver")
    assert "http://localhost:8974/health" in probe("airflow-scheduler")
    assert (
        env_of(services["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    )
    assert re.search(r'inspect ping -d "celery@\$\{?HOSTNAME\}?"', probe("airflow-worker"))
    assert "DagProcessorJob" in probe("airflow-dag-processor")
    assert "TriggererJob" in probe("airflow-triggerer")


def test_worker_is_scalable_and_bounded(config: dict) -> None:
    worker = config["services"]["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert "container_name" not in worker and not worker.get("ports"), "--scale needs neither"
    env = env_of(worker)
    assert env["DUMB_INIT_SETSID"] == "0"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "4"
    assert worker["mem_limit"] == "6g"


def test_ports_are_published_on_loopback_only(config: dict) -> None:
    expected = {
        "airflow-apiserver": {("8080", "8080")},
        "minio": {("9000", "9000"), ("9001", "9001")},
        "flower": {("5555", "5555")},
    }
    for name, service in config["services"].items():
        ports = published(service)
        assert {(p, t) for _, p, t in ports} == expected.get(name, set()), name
        assert all(ip == "127.0.0.1" for ip, _, _ in ports), (name, ports)


def test_variables_reach_the_services(tmp_path: Path) -> None:
    overrides = {
        "AR_RAW_ARCHIVE": "/srv/t120/raw",
        "AR_PRODUCTS_ROOT": "s3://t120-products/reduced",
        "AIRFLOW_BIND_ADDRESS": "0.0.0.0",
        "AIRFLOW_API_PORT": "18080",
        "AIRFLOW_WORKER_CONCURRENCY": "7",
        "AIRFLOW_WORKER_MEM_LIMIT": "12g",
        "AIRFLOW_ADMIN_USER": "observer",
        "AIRFLOW_IMAGE_NAME": "registry.example/t120/airflow:1",
    }
    services = render(SECRETS | overrides, tmp_path)["services"]
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AR_PRODUCTS_ROOT"] == "s3://t120-products/reduced"
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "observer:admin"
        assert ("/srv/t120/raw", "/data/raw", True) in mounts(services[name])
        assert services[name]["image"] == "registry.example/t120/airflow:1"
    assert published(services["airflow-apiserver"]) == [("0.0.0.0", "18080", "8080")]
    worker = services["airflow-worker"]
    assert env_of(worker)["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "7"
    assert worker["mem_limit"] == "12g"
    assert env_of(services["airflow-init"])["AR_ADMIN_USER"] == "observer"
