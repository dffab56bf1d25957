"""The three service images (`services/<role>/Dockerfile`), checked without a Docker engine.

What would otherwise only show up at `docker build` or at `docker stop`: lint findings, an
unpinned or mismatched base, dependencies that are not the locked ones, CUDA in the inference
image, weights or data that are not the published files, a COPY source missing from the build
context, secrets or tests in the context, a build-time CA certificate left in the image, a code
change that ships the whole virtualenv again, a root user, a HEALTHCHECK or ENTRYPOINT that does
not run. Where a Dockerfile runs a program (uv export, the health check, the entry point), the
test runs the same program here. `tests/e2e` builds and runs the images for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iot_inference.model import WEIGHTS_FILE, WEIGHTS_SHA256, WEIGHTS_URL
from iot_inference.settings import InferenceSettings
from iot_producer.cifar import ARCHIVE_MD5, ARCHIVE_URL, load_split
from iot_producer.settings import ProducerSettings
from iot_shared.http_server import serve_http
from iot_shared.settings import ServiceSettings, env_name
from iot_sink.settings import SinkSettings
from testbed.paths import REPO
from testbed.ports import free_port
from tests.deploy.conftest import ROLES, VENV_BIN, Dockerfile, dockerfile_path, find_tool

SETTINGS: dict[str, type[ServiceSettings]] = {
    "producer": ProducerSettings,
    "inference": InferenceSettings,
    "sink": SinkSettings,
}
# What PyPI's torch pulls in for CUDA; the inference image takes the CPU-only build instead.
CUDA_PACKAGES = re.compile(r"^(torch|triton|nvidia-|cuda-)")


def run(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


# The stages that install Python packages: `deps` (third-party, from the lock), then `builder`
# (the project's own), which starts from it.
BUILD_STAGES = ("build-base", "requirements", "deps", "builder")
# The build arguments users set (deploy/compose/README.md, "Images", documents each).
BUILD_ARGS = {
    "producer": {"PYTHON_IMAGE", "BUILD_CA_CERTS", "CIFAR_URL", "CIFAR_MD5"},
    "inference": {
        "PYTHON_IMAGE",
        "BUILD_CA_CERTS",
        "TORCH_VERSION",
        "TORCH_INDEX_URL",
        "WEIGHTS_URL",
        "WEIGHTS_SHA256",
    },
    "sink": {"PYTHON_IMAGE", "BUILD_CA_CERTS"},
}


def builder_runs(dockerfile: Dockerfile) -> list[str]:
    """The shell commands of the build stages' RUN lines, in order, split at `&&`."""
    return [
        part.strip()
        for stage in BUILD_STAGES
        for i in dockerfile.stage(stage).all("RUN")
        for part in i.args.split("&&")
    ]


def declared_args(dockerfile: Dockerfile) -> dict[str, str]:
    """Every ARG of the file (global and per stage) -> its default."""
    args = dict(dockerfile.global_args)
    for stage in dockerfile.stages:
        for arg in stage.all("ARG"):
            name, _, default = arg.args.partition("=")
            args[name] = default
    return args


# --- lint and structure -------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_passes_hadolint_without_findings(role: str) -> None:
    hadolint = find_tool("hadolint")
    result = run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile_path(role))], cwd=REPO
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # A rule may only be switched off with the reason written on the line above.
    lines = dockerfile_path(role).read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert n > 0 and lines[n - 1].startswith("#") and "hadolint" not in lines[n - 1], (
                f"{dockerfile_path(role)}:{n + 1}: ignored rule without a reason above it"
            )
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists()


def test_every_image_starts_from_the_same_pinned_slim_python_as_the_project(
    dockerfiles: dict[str, Dockerfile],
) -> None:
    bases = {role: d.global_args.get("PYTHON_IMAGE") for role, d in dockerfiles.items()}
    assert len(set(bases.values())) == 1, f"the images disagree on Python: {bases}"
    base = bases["sink"]
    assert base
    match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-bookworm", base)
    assert match, f"{base} is not an exact slim Python tag"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={match.group(1)}" in requires, f"image Python {match.group(1)} vs requires-python {requires}"
    for role, dockerfile in dockerfiles.items():
        earlier: set[str] = set()
        for stage in dockerfile.stages:
            assert stage.base in {"${PYTHON_IMAGE}", "scratch"} | earlier, f"{role}: FROM {stage.base}"
            earlier.add(stage.name or "")


@pytest.mark.parametrize("role", ROLES)
def test_final_stage_holds_only_the_virtualenv_and_its_data(
    dockerfiles: dict[str, Dockerfile], role: str
) -> None:
    final = dockerfiles[role].final
    assert len(dockerfiles[role].stages) >= 2
    copies = final.all("COPY") + final.all("ADD")
    assert all(c.keyword == "COPY" and c.flag("from") for c in copies), "final stage copies from the context"
    copied = [(c.flag("from"), *c.operands) for c in copies]
    assert ("deps", "/opt/venv", "/opt/venv") in copied
    assert ("builder", "/opt/project/opt/venv", "/opt/venv") in copied
    # Nothing is installed in the runtime stage: no compiler, pip or uv reaches the image. It only
    # adds the service's user (and the producer the folder of its run state, owned by that user).
    [run] = [r.args for r in final.all("RUN")]
    assert run.startswith("useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin iot")
    assert re.sub(
        r"\s+", " ", run.removeprefix("useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin iot")
    ) in {
        "",
        " && install -d -o 10001 -g 10001 -m 0700 /var/lib/iot-producer" if role == "producer" else "",
    }
    assert "python -m venv --without-pip /opt/venv" in builder_runs(dockerfiles[role])


@pytest.mark.parametrize("role", ROLES)
def test_a_code_change_ships_only_a_small_layer(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    """Third-party packages are one layer made from the lock file; the project's code comes last.

    Then a one-line change rebuilds only the builder stage, and the image differs from the last
    one by a layer of some hundred kB, not by the virtualenv (with torch, gigabytes).
    """
    dockerfile = dockerfiles[role]
    requirements, deps = dockerfile.stage("requirements"), dockerfile.stage("deps")
    builder = dockerfile.stage("builder")
    # The requirements are exported from the lock and the pyproject files only, never the code;
    # deps sees only the exported requirements, so a pyproject edit that leaves them as they
    # were (tool settings) does not rebuild the virtualenv.
    sources = [s for c in requirements.all("COPY") for s in c.operands[:-1]]
    assert sources and all(Path(s).name in {"pyproject.toml", "uv.lock"} for s in sources), sources
    assert [(c.flag("from"), c.operands) for c in deps.all("COPY")] == [
        ("requirements", ["/src/requirements.txt", "./"])
    ]
    # builder starts from deps and installs the project beside the virtualenv, not into it...
    assert builder.base == "deps"
    assert {s for c in builder.all("COPY") for s in c.operands[:-1]} == {
        "shared/pyproject.toml",
        f"services/{role}/pyproject.toml",
        "shared/src",
        f"services/{role}/src",
    }
    steps = builder_runs(dockerfile)
    install = next(s for s in steps if "/wheels/*.whl" in s and "install" in s)
    assert "--root /opt/project" in install and "--no-deps" in install.split()
    # ... checks the merged result as the image will hold it ...
    merge = steps.index("cp -a /opt/project/opt/venv/. /opt/venv/")
    assert steps.index(install) < merge < steps.index("pip --python /opt/venv/bin/python check")
    # ... and the runtime stage copies the project's code last, after the virtualenv and the data.
    copies = dockerfile.final.all("COPY")
    assert copies[0].flag("from") == "deps"
    assert copies[-1].flag("from") == "builder"
    assert [c.flag("from") for c in copies].count("builder") == 1


@pytest.mark.parametrize("role", ROLES)
def test_build_ca_certificates_never_reach_the_image(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    """BUILD_CA_CERTS (a TLS-intercepting proxy's CA) is for pip at build time only, and opt-in."""
    dockerfile = dockerfiles[role]
    assert "BUILD_CA_CERTS" not in dockerfile.global_args
    for stage in dockerfile.stages:
        declares = [a for a in stage.all("ARG") if a.args.partition("=")[0] == "BUILD_CA_CERTS"]
        if stage.name == "build-base":
            assert [a.args for a in declares] == ['BUILD_CA_CERTS=""'], "must be empty by default"
        else:
            # The other build stages inherit the trust; the runtime stage never declares it.
            assert not declares, f"{role}: stage {stage.name or 'final'} declares BUILD_CA_CERTS"
    assert not dockerfile.final.all("ARG")
    # Used once, before pip first runs, and only when set: written to the CA store and pip's
    # config of the build stage, neither of which the runtime stage copies.
    runs = dockerfile.stage("build-base").all("RUN")
    using = [r for r in runs if "BUILD_CA_CERTS" in r.args]
    assert len(using) == 1 and runs.index(using[0]) == 0
    script = using[0].args
    assert script.startswith('if [ -n "${BUILD_CA_CERTS}" ]; then') and script.endswith("fi")
    assert "> /usr/local/share/ca-certificates/" in script and "update-ca-certificates" in script
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in script and "> /etc/pip.conf" in script
    for copy in dockerfile.final.all("COPY"):
        assert copy.operands[0].startswith(("/opt/", "/models", "/cifar10")), copy.args


@pytest.mark.parametrize("role", ROLES)
def test_build_arguments_are_the_documented_ones(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    args = declared_args(dockerfiles[role])
    assert set(args) == BUILD_ARGS[role]
    readme = (REPO / "deploy" / "compose" / "README.md").read_text()
    images = readme.split("\n## Images", 1)[1].split("\n## ", 1)[0]
    for name in args:
        assert f"`{name}`" in images, f"deploy/compose/README.md, Images: {name} is not documented"
    # The defaults keep a plain `docker build` as it always was: Docker Hub's Python, PyTorch's
    # CPU index, the published weights and data.
    assert args["PYTHON_IMAGE"].startswith("python:")
    assert args["BUILD_CA_CERTS"] == '""'


@pytest.mark.parametrize("role", ROLES)
def test_image_runs_as_a_non_root_user(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    final = dockerfiles[role].final
    user = final.one("USER").args
    assert user.isdigit() and int(user) != 0, f"USER {user}"
    assert f"--uid {user}" in final.one("RUN").args, "the user has no passwd entry"


@pytest.mark.parametrize("role", ROLES)
def test_docker_stop_reaches_the_service(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    final = dockerfiles[role].final
    # SIGTERM goes to PID 1: the service itself (exec form, no shell in between), which flushes
    # and commits on SIGTERM (iot_shared.lifecycle.StopFlag).
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    assert final.one("ENTRYPOINT").exec_form() == [f"iot-{role}"]
    assert not final.all("CMD")


@pytest.mark.parametrize("role", ROLES)
def test_entrypoint_answers_help_here_and_at_build_time(
    dockerfiles: dict[str, Dockerfile], role: str
) -> None:
    command = dockerfiles[role].final.one("ENTRYPOINT").exec_form()[0]
    result = run([str(VENV_BIN / command), "--help"])
    assert result.returncode == 0, result.stderr
    assert "--metrics-port" in result.stdout
    # The build runs it too, so an image whose command cannot start is never tagged.
    assert f"/opt/venv/bin/{command} --help > /dev/null" in builder_runs(dockerfiles[role])


@pytest.mark.parametrize("role", ROLES)
def test_image_settings_are_settings_the_service_reads(dockerfiles: dict[str, Dockerfile], role: str) -> None:
    env = {k: v for k, v in dockerfiles[role].final.env().items() if k.startswith("IOT_")}
    settings = SETTINGS[role]
    known = {env_name(name) for name in settings.model_fields}
    assert set(env) <= known, f"{role} image sets variables its settings do not read: {set(env) - known}"
    parsed = settings.model_validate({k.removeprefix("IOT_").lower(): v for k, v in env.items()})
    # The port the image exposes and probes is the one the service serves /metrics on.
    default_port = settings.model_fields["metrics_port"].default
    assert parsed.metrics_port == default_port
    assert dockerfiles[role].final.one("EXPOSE").args == str(default_port)


# --- health check -------------------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[Callable[[bool], int]]:
    servers = []

    def start(ready: bool) -> int:
        port = free_port()
        server = serve_http(port, lambda: (ready, "state"), host="127.0.0.1")
        assert server is not None
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("role", ROLES)
def test_healthcheck_command_reports_readiness(
    dockerfiles: dict[str, Dockerfile], role: str, health_server: Callable[[bool], int]
) -> None:
    healthcheck = dockerfiles[role].final.one("HEALTHCHECK").args
    options, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[0] == "python", "the image has no curl: the check runs with the service's Python"
    timeout = int(re.search(r"--timeout=(\d+)s", options).group(1))  # type: ignore[union-attr]
    assert timeout > 3, "the check's own HTTP timeout (3 s) must fit in HEALTHCHECK --timeout"
    native = [str(VENV_BIN / "python"), *argv[1:]]
    for ready, code in ((True, 0), (False, 1)):
        env = {**os.environ, "IOT_METRICS_PORT": str(health_server(ready))}
        assert run(native, env=env).returncode == code
    # Nothing listening (the service has not started or has died): unhealthy.
    env = {**os.environ, "IOT_METRICS_PORT": str(free_port())}
    assert run(native, env=env).returncode == 1


# --- dependencies -------------------------------------------------------------------------


def uv_binary() -> str:
    return shutil.which("uv", path=str(REPO / ".uv" / "bin")) or find_tool("uv")


def build_stage_context(dockerfile: Dockerfile, workdir: Path) -> None:
    """Copy what the requirements stage COPYs from the context (the lock and the pyproject files)."""
    for copy in dockerfile.stage("requirements").all("COPY"):
        if copy.flag("from"):
            continue
        *sources, dest = copy.operands
        for source in sources:
            target = workdir / dest / Path(source).name if dest.endswith("/") else workdir / dest
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)


def requirement_names(requirements: str) -> dict[str, str]:
    """name -> the whole entry (with its hashes) of a requirements file."""
    entries: dict[str, str] = {}
    name = ""
    for line in requirements.splitlines():
        if re.match(r"^[a-z]", line):
            name = re.split(r"[=<>!~; ]", line, maxsplit=1)[0]
            entries[name] = line
        elif line.startswith(" ") and name:
            entries[name] += "\n" + line
    return entries


@pytest.mark.parametrize("role", ROLES)
def test_dependencies_are_the_locked_ones_hash_checked(
    dockerfiles: dict[str, Dockerfile], role: str, tmp_path: Path
) -> None:
    """Run the Dockerfile's own `uv export` (and filter) on a copy of its build stage's files."""
    steps = builder_runs(dockerfiles[role])
    export = next(s for s in steps if s.startswith("uv export"))
    assert "--locked" in shlex.split(export), "the build must fail on a stale uv.lock"
    assert f"--package iot-{role}" in export
    install = next(s for s in steps if "--requirement requirements.txt" in s)
    assert "--require-hashes" in install.split()
    build_stage_context(dockerfiles[role], tmp_path)
    filters = [s for s in steps if s.startswith("awk ")]
    env = {**os.environ, "UV_OFFLINE": "1", "PATH": f"{Path(uv_binary()).parent}:{os.environ['PATH']}"}
    for step in [export, *filters]:
        result = run(["bash", "-o", "pipefail", "-c", step], cwd=tmp_path, env=env)
        assert result.returncode == 0, f"{step}: {result.stderr}"
    requirements = requirement_names((tmp_path / "requirements.txt").read_text())
    assert requirements, "no requirements exported"
    for name, entry in requirements.items():
        assert re.match(rf"^{re.escape(name)}==[^\s;]+", entry), f"{name} is not pinned: {entry}"
        assert "--hash=sha256:" in entry, f"{name} has no hash"
    assert not any(name.startswith("iot-") for name in requirements), (
        "workspace packages are built, not pulled"
    )
    if role == "inference":
        locked = requirement_names((tmp_path / "locked.txt").read_text())
        assert "torch" in locked
        dropped = set(locked) - set(requirements)
        assert dropped == {n for n in locked if CUDA_PACKAGES.match(n)}, f"dropped: {sorted(dropped)}"
    else:
        assert not any(CUDA_PACKAGES.match(n) for n in requirements)


def test_build_tools_match_the_ones_make_uses(dockerfiles: dict[str, Dockerfile]) -> None:
    make_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert make_uv, "UV_VERSION not found in the Makefile"
    for role, dockerfile in dockerfiles.items():
        tools = next(s for s in builder_runs(dockerfile) if s.startswith("pip install "))
        assert re.fullmatch(rf"pip install uv=={re.escape(make_uv.group(1))} hatchling==[\d.]+", tools), role
    # The project's packages are built with that hatchling, not with one fetched at build time.
    for role in ROLES:
        for pyproject in (REPO / "shared", REPO / "services" / role):
            backend = tomllib.loads((pyproject / "pyproject.toml").read_text())["build-system"]
            assert backend["build-backend"] == "hatchling.build"


def test_inference_takes_cpu_only_torch_at_the_locked_version(dockerfiles: dict[str, Dockerfile]) -> None:
    deps = dockerfiles["inference"].stage("deps")
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    args = [a.args for a in deps.all("ARG")]
    assert f"TORCH_VERSION={locked['torch']}" in args
    # By default PyTorch's CPU-only index; `TORCH_INDEX_URL=https://pypi.org/simple` (no access to
    # download.pytorch.org) takes PyPI's CUDA build, with the CUDA packages it depends on.
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    steps = builder_runs(dockerfiles["inference"])
    torch_install = next(s for s in steps if '"torch==${TORCH_VERSION}"' in s)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install
    # With its dependencies, but after the hash-checked lock: every dependency the CPU build has is
    # installed already at its locked version, so pip adds none (`pip check` proves them enough).
    assert "--no-deps" not in torch_install.split()
    locked_install = next(s for s in steps if "--requirement requirements.txt" in s)
    assert steps.index(locked_install) < steps.index(torch_install)


# --- weights and data baked into the images -----------------------------------------------


def test_inference_image_carries_the_published_weights(
    dockerfiles: dict[str, Dockerfile], weights_path: Path
) -> None:
    dockerfile = dockerfiles["inference"]
    source = dockerfile.stage("weights-source")
    assert source.base == "scratch"
    # The published file by default; the classic builder (no --build-context) takes a local copy
    # from a URL it can reach (`WEIGHTS_URL=http://127.0.0.1:.../`), checked the same way.
    assert source.one("ARG").args == f"WEIGHTS_URL={WEIGHTS_URL}"
    assert source.one("ADD").operands == ["${WEIGHTS_URL}", f"/{WEIGHTS_FILE}"]
    check = dockerfile.stage("weights")
    assert check.one("ARG").args == f"WEIGHTS_SHA256={WEIGHTS_SHA256}"
    # The checked stage reads whatever weights-source holds: the download, or --build-context.
    assert check.one("COPY").flag("from") == "weights-source"
    steps = [step.strip() for step in check.one("RUN").args.split("&&")]
    assert steps[0] == f'echo "${{WEIGHTS_SHA256}}  /models/{WEIGHTS_FILE}" | sha256sum --check -'
    # ADD from a URL writes mode 600: without this the non-root service cannot read the file.
    assert f"chmod 0444 /models/{WEIGHTS_FILE}" in steps
    final = dockerfile.final
    copied = next(c for c in final.all("COPY") if c.flag("from") == "weights")
    assert copied.operands == ["/models", "/opt/models"]
    assert final.env()["IOT_WEIGHTS"] == f"/opt/models/{WEIGHTS_FILE}"
    # The pinned hash is that of the file the native tests classify with.
    assert hashlib.sha256(weights_path.read_bytes()).hexdigest() == WEIGHTS_SHA256


def test_producer_image_carries_the_published_cifar10(
    dockerfiles: dict[str, Dockerfile], cifar_dir: Path
) -> None:
    dockerfile = dockerfiles["producer"]
    source = dockerfile.stage("cifar-source")
    assert source.base == "scratch"
    assert source.one("ARG").args == f"CIFAR_URL={ARCHIVE_URL}"
    assert source.one("ADD").operands == ["${CIFAR_URL}", "/cifar-10-binary.tar.gz"]
    check = dockerfile.stage("cifar")
    assert check.one("ARG").args == f"CIFAR_MD5={ARCHIVE_MD5}"
    assert check.one("COPY").flag("from") == "cifar-source"
    steps = [s.strip() for s in check.one("RUN").args.split("&&")]
    assert steps[0] == 'echo "${CIFAR_MD5}  /tmp/cifar-10-binary.tar.gz" | md5sum --check -'
    assert "tar -xzf /tmp/cifar-10-binary.tar.gz -C /cifar10" in steps
    assert "test -f /cifar10/cifar-10-batches-bin/test_batch.bin" in steps
    assert "chmod -R a+rX /cifar10" in steps, "the non-root service must be able to read the data"
    final = dockerfile.final
    copied = next(c for c in final.all("COPY") if c.flag("from") == "cifar")
    assert copied.operands == ["/cifar10", "/opt/cifar10"]
    assert final.env()["IOT_DATA_DIR"] == "/opt/cifar10"
    # The producer reads that layout (a folder holding cifar-10-batches-bin), like the test copy.
    assert (cifar_dir / "cifar-10-batches-bin").is_dir()
    assert len(load_split(cifar_dir, "test")) == 10_000


# --- build context ---------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it (moby/patternmatcher): `**` spans folders."""
    pattern = os.path.normpath(pattern).lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            body = line[1:].strip() if include else line
            self.rules.append((include, _pattern_regex(body), os.path.normpath(body).lstrip("/")))

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # parents match too
        excluded = False
        for include, regex, _ in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = not include
        return excluded

    def may_include_below(self, folder: str) -> bool:
        """Could a `!pattern` re-include something under this excluded folder?"""
        for include, _, body in self.rules:
            if include:
                literal = re.split(r"[*?\[]", body, maxsplit=1)[0]
                if literal.startswith(folder + "/") or (folder + "/").startswith(literal):
                    return True
        return False

    def context(self, root: Path) -> set[str]:
        files: set[str] = set()
        for folder, dirs, names in os.walk(root):
            rel = Path(folder).relative_to(root).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if not self.excluded(rel + d) or self.may_include_below(rel + d)]
            files |= {rel + n for n in names if not self.excluded(rel + n)}
        return files


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("uv.lock", True),
        ("pyproject.toml", True),
        ("shared/src/iot_shared/settings.py", True),
        ("services/inference/src/iot_inference/model.py", True),
        ("services/sink/pyproject.toml", True),
        ("services/sink/src/iot_sink/__pycache__/app.cpython-311.pyc", False),
        ("deploy/compose/.env", False),
        ("tests/unit/test_docs.py", False),
        (".venv/bin/python", False),
        (".uv/bin/uv", False),
        (".git/config", False),
        (".pytest_cache/v/cache/lastfailed", False),
        ("deploy/local/.kafka/kafka.tgz", False),
        ("cifar-10-binary.tar.gz", False),
        ("services/sink/Dockerfile", False),
        ("README.md", False),
    ],
)
def test_build_context_keeps_tests_data_caches_and_secrets_out(
    dockerignore: DockerIgnore, path: str, sent: bool
) -> None:
    assert dockerignore.excluded(path) is not sent


def test_dockerignore_exceptions_are_plain_paths() -> None:
    # BuildKit walks into a folder for `!services/*/src/`; the legacy builder and docker-py
    # (docker-compose v1) skip it, and the build fails on a missing COPY source.
    for line in (REPO / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            assert not re.search(r"[*?\[]", line), f"wildcard in a .dockerignore exception: {line}"


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_copy_sources_exist_in_the_build_context(
    dockerfiles: dict[str, Dockerfile], dockerignore: DockerIgnore, role: str
) -> None:
    context = dockerignore.context(REPO)
    used: set[str] = set()
    for stage in dockerfiles[role].stages:
        for copy in stage.all("COPY"):
            if copy.flag("from"):
                continue
            for source in copy.operands[:-1]:
                path = os.path.normpath(source)
                assert (REPO / path).exists(), f"{dockerfile_path(role)}: COPY {source} does not exist"
                sent = {f for f in context if f == path or f.startswith(path + "/")}
                assert sent, f"{dockerfile_path(role)}: COPY {source} is excluded by .dockerignore"
                used |= sent
    # And the context holds nothing else the image could not use (it stays small and clean).
    for other in ROLES:
        if other != role:
            context -= {f for f in context if f.startswith(f"services/{other}/src/")}
    assert context - used == set()
