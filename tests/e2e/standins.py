"""Stand-ins for the third-party images of the Compose stack, which cannot be pulled here.

No registry is reachable from this machine (no Docker Hub), so `couchdb`, `prom/prometheus`,
`prom/alertmanager` and `confluentinc/cp-zookeeper` / `cp-kafka` are replaced, for the tests
only, by images made from Debian bookworm (mmdebstrap, variant minbase, plus the packages named
below) and what the project's `make install` made (`deploy/local/.kafka/libs`, Kafka's jars from Maven Central, and
`deploy/local/.couchdb`, CouchDB built from source).
Each root filesystem is cached as a tarball (`tests.e2e.rootfs`, keyed by what goes in) and
imported into an engine (`docker import` / `podman import` with `--change`) under a name the
test gives Compose through `KAFKA_IMAGE`, `ZOOKEEPER_IMAGE`, `COUCHDB_IMAGE`, `PROMETHEUS_IMAGE`,
`ALERTMANAGER_IMAGE`.
The scripts copied in are in `standin-files/` beside this module.

They run the stack's files unchanged: the same environment variables, mounts, volumes, ports and
health-check commands as the real images. Where they differ from those images:

couchdb (for `couchdb:3.5.0`): Apache CouchDB 3.5.0 itself, the release `make install` builds
  from source (`deploy/local/couchdb.sh`: Debian's Erlang/OTP 25, QuickJS), on Debian bookworm.
  - The same layout as the official image: the release in `/opt/couchdb`, databases in
    `/opt/couchdb/data` (a VOLUME), `etc/local.d/*.ini` read after `default.d/`, the image's
    `default.d/10-docker-default.ini` binding every interface, port 5984.
  - `/docker-entrypoint.sh` (standin-files/couchdb/) writes the admin from `COUCHDB_USER` /
    `COUCHDB_PASSWORD` and `COUCHDB_SECRET` into `local.d/docker.ini` once, `NODENAME` into
    `vm.args` and `COUCHDB_ERLANG_COOKIE` into `.erlang.cookie`; it refuses to start with no
    admin, as CouchDB 3 does. `ERL_FLAGS` is ignored. `vm.args` is the official image's: no node
    name without `NODENAME`, Erlang distribution on port 9100.
  - No Fauxton (`/_utils`): the build leaves the web UI out (it needs a browser build).
  - Runs as `couchdb` (uid and gid 5984) from the start (no root entry point and gosu); PID 1 is
    CouchDB's Erlang VM (no tini), which starts its own epmd.

prometheus (for `prom/prometheus:v3.1.0`): Debian's `prometheus` package, 2.42, not 3.1.
  - Same entry point `/bin/prometheus`, default arguments (`--config.file=/etc/prometheus/
    prometheus.yml --storage.tsdb.path=/prometheus`), user nobody, workdir and VOLUME `/prometheus`,
    port 9090, and `promtool`. The flags compose.yaml (none) and the Ansible role
    (`--config.file`, `--web.config.file`, `--storage.tsdb.path`, `--storage.tsdb.retention.time`,
    `--web.listen-address`) pass all exist in 2.42, and so does the web config's TLS and bcrypt
    basic auth.
  - Prometheus 2's classic web UI (Debian's build), not 3's; 3.x-only configuration or query
    features would fail here. The default prometheus.yml is Debian's (the stack mounts its own).
  - moment-timezone's raw data (220 MB, which the UI does not load) is left out.

alertmanager (for `prom/alertmanager:v0.28.1`): Debian's `prometheus-alertmanager` package,
  0.25, not 0.28.
  - Same entry point `/bin/alertmanager` (a link to Debian's `/usr/bin/prometheus-alertmanager`),
    default arguments (`--config.file=/etc/alertmanager/alertmanager.yml
    --storage.path=/alertmanager`), user nobody, workdir and VOLUME `/alertmanager` (owned by
    nobody, as is `/etc/alertmanager`), port 9093, and `amtool` on the PATH. The default
    alertmanager.yml is upstream's `examples/ha` one, as in the real image (the stack mounts its
    own). The flags compose.yaml and the Ansible role pass (`--config.file`, `--storage.path`,
    `--cluster.listen-address=`, `--web.external-url`, `--web.listen-address`,
    `--web.config.file`) all exist in 0.25.
  - No web UI: Debian does not ship it (its Elm build); `/` is a page that says so. The API
    (`/api/v2`), `/-/ready`, `/-/healthy`, `/-/reload`, `/metrics` and amtool work as in 0.28.
  - Alertmanager 0.25's configuration: no `url_file` for webhooks (0.26), nor the notifiers 0.28
    added (Jira, Rocket.Chat, Teams through Flows); `smtp_auth_password_file` /
    `auth_password_file`, `http_config.authorization.credentials_file` and `source_matchers` /
    `target_matchers` exist. Prometheus talks to it with the API v2, as to 0.28.

kafka (one image for both `confluentinc/cp-zookeeper:7.7.1` and `confluentinc/cp-kafka:7.7.1`):
  Apache Kafka 3.9.2's jars from Maven Central (`deploy/local/pom.xml`) in
  `/usr/share/java/kafka` on Debian's OpenJDK 17 JRE (headless); Confluent 7.7.1 ships Kafka
  3.7.1 (Confluent's build) on Zulu/Temurin 17.
  - `/etc/confluent/docker/run` (the command) does what Confluent's does for a single node:
    with `ZOOKEEPER_CLIENT_PORT` set it writes `/etc/kafka/zookeeper.properties` from the
    `ZOOKEEPER_*` variables (camelCase: `ZOOKEEPER_TICK_TIME` -> `tickTime`,
    `ZOOKEEPER_AUTOPURGE_PURGE_INTERVAL` -> `autopurge.purgeInterval`; `dataDir` and `dataLogDir`
    under `/var/lib/zookeeper`) and runs ZooKeeper 3.8.4 (`QuorumPeerMain`); otherwise it writes
    `/etc/kafka/kafka.properties` from the `KAFKA_*` variables (`KAFKA_FOO_BAR` -> `foo.bar`,
    `__` -> `_`, `___` -> `-`; `log.dirs=/var/lib/kafka/data` unless set), leaving out the JVM and
    logging ones (`KAFKA_HEAP_OPTS`, `KAFKA_OPTS`, `KAFKA_JMX_*`, `KAFKA_LOG4J_*`, ...), waits up
    to `KAFKA_CUB_ZK_TIMEOUT` (40 s) for ZooKeeper and runs the broker (`kafka.Kafka`).
    `KAFKA_HEAP_OPTS` (default 512M / 1G as Confluent's), `KAFKA_JVM_PERFORMANCE_OPTS`,
    `KAFKA_OPTS`, `KAFKA_LOG4J_OPTS`, `KAFKA_LOG4J_ROOT_LOGLEVEL` and `KAFKA_LOG4J_LOGGERS` apply.
  - Not supported: KRaft (`KAFKA_PROCESS_ROLES`; it exits with a message), a ZooKeeper ensemble
    (`ZOOKEEPER_SERVERS`, `ZOOKEEPER_SERVER_ID`), SSL/SASL setup from `*_SSL_*`/JAAS variables
    and secrets files, JMX, Confluent's metrics reporter and license/telemetry settings.
  - Commands: `kafka-broker-api-versions` (compose.yaml's health check), `kafka-topics`,
    `kafka-consumer-groups` and `kafka-run-class` (`kafka-run-class CLASS ARGS`); the other
    `kafka-*` tools, `zookeeper-shell`, `cub` and `dub` are missing. `kafka-topics` and
    `kafka-consumer-groups` need `kafka-tools` in `deploy/local`'s jars (its pom lists it).
    `nc` (OpenBSD netcat) is there for ZooKeeper's `echo ruok | nc` health check.
  - Runs as `appuser` (uid 1000) as Confluent's, but declares no VOLUME (one image serves both
    roles: each would otherwise get anonymous volumes for the other's folders).

All four: one layer, `ENV PATH` and `LANG=C.UTF-8`, packages from the Debian mirror at build
time, no HEALTHCHECK (neither have the real images). A label carries the recipe's key; a changed
recipe is imported again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from testbed.paths import REPO
from tests.e2e.rootfs import debian_rootfs, import_image

FILES: Final = Path(__file__).with_name("standin-files")
KAFKA_LIBS: Final = REPO / "deploy" / "local" / ".kafka" / "libs"
COUCHDB_RELEASE: Final = REPO / "deploy" / "local" / ".couchdb"
KEY_LABEL: Final = "org.iot-pipeline.standin.key"
# Confluent's command names for Kafka's tools, in the kafka stand-in (standin-files/kafka/).
KAFKA_COMMANDS: Final = (
    "kafka-run-class",
    "kafka-broker-api-versions",
    "kafka-topics",
    "kafka-consumer-groups",
)
BASE_CHANGES: Final = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
# Documentation is not part of any image.
NO_DOCS: Final = 'rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/*'


class StandInError(RuntimeError):
    """A stand-in image could not be built or imported."""


@dataclass(frozen=True)
class StandIn:
    """How to make one stand-in: a Debian root filesystem, files copied in, image settings."""

    name: str  # also the rootfs cache name
    replaces: tuple[str, ...]  # the images it stands in for
    tag: str  # the name it is imported under by default
    packages: tuple[str, ...]
    hooks: tuple[str, ...]  # mmdebstrap --customize-hook commands; "$1" is the root folder
    inputs: tuple[Path, ...]  # what the hooks copy in (hashed into the cache key)
    changes: tuple[str, ...]  # Dockerfile instructions applied at import (one port per EXPOSE: podman)


COUCHDB: Final = StandIn(
    name="standin-couchdb",
    replaces=("couchdb:3.5.0",),
    tag="localhost/iot-standin-couchdb:3.5.0",
    packages=("libicu72", "libssl3", "libstdc++6", "curl"),
    hooks=(
        'mkdir -p "$1/opt/couchdb"',  # sync-in copies into a folder that exists
        f"sync-in {COUCHDB_RELEASE} /opt/couchdb",
        'rm -f "$1/opt/couchdb/.recipe.sha256"',
        # The official image's vm.args: no node name, not even in a comment (the entry point adds
        # NODENAME's unless "couchdb@" is there), Erlang distribution on every interface, port 9100.
        "sed -i -e '/^-name /d' -e '/couchdb@/d' -e '/inet_dist_use_interface/d' \"$1/opt/couchdb/etc/vm.args\"",
        "printf -- '-kernel inet_dist_listen_min 9100\\n-kernel inet_dist_listen_max 9100\\n'"
        ' >>"$1/opt/couchdb/etc/vm.args"',
        'mkdir -p "$1/opt/couchdb/data"',
        f"copy-in {FILES / 'couchdb' / '10-docker-default.ini'} /opt/couchdb/etc/default.d",
        f"copy-in {FILES / 'couchdb' / 'docker-entrypoint.sh'} /",
        'chroot "$1" groupadd --system --gid 5984 couchdb',
        'chroot "$1" useradd --system --uid 5984 --gid couchdb --home-dir /opt/couchdb --no-create-home'
        " --shell /bin/bash couchdb",
        'chroot "$1" chown -R couchdb:couchdb /opt/couchdb',
        NO_DOCS,
    ),
    inputs=(COUCHDB_RELEASE, FILES / "couchdb"),
    changes=(
        *BASE_CHANGES,
        "USER couchdb",
        "WORKDIR /opt/couchdb",
        "VOLUME /opt/couchdb/data",
        "EXPOSE 5984",
        "EXPOSE 4369",
        "EXPOSE 9100",
        'ENTRYPOINT ["/docker-entrypoint.sh"]',
        'CMD ["/opt/couchdb/bin/couchdb"]',
    ),
)

PROMETHEUS: Final = StandIn(
    name="standin-prometheus",
    replaces=("prom/prometheus:v3.1.0",),
    tag="localhost/iot-standin-prometheus:2.42",
    packages=("prometheus",),
    hooks=(
        'rm -rf "$1/usr/share/javascript/moment-timezone/data"',
        'mkdir -p "$1/prometheus" && chroot "$1" chown nobody:nogroup /prometheus',
        NO_DOCS,
    ),
    inputs=(),
    changes=(
        *BASE_CHANGES,
        "USER nobody",
        "WORKDIR /prometheus",
        "VOLUME /prometheus",
        "EXPOSE 9090",
        'ENTRYPOINT ["/bin/prometheus"]',
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]',
    ),
)

ALERTMANAGER: Final = StandIn(
    name="standin-alertmanager",
    replaces=("prom/alertmanager:v0.28.1",),
    tag="localhost/iot-standin-alertmanager:0.25",
    packages=("prometheus-alertmanager",),
    hooks=(
        # The real image's names: /bin/alertmanager (Debian's binary is prometheus-alertmanager),
        # and upstream's example configuration, which Debian ships as documentation.
        'ln -s /usr/bin/prometheus-alertmanager "$1/bin/alertmanager"',
        'mkdir -p "$1/etc/alertmanager" "$1/alertmanager"',
        'cp "$1/usr/share/doc/prometheus-alertmanager/examples/ha/alertmanager.yml" "$1/etc/alertmanager/"',
        'chroot "$1" chown -R nobody:nogroup /etc/alertmanager /alertmanager',
        NO_DOCS,
    ),
    inputs=(),
    changes=(
        *BASE_CHANGES,
        "USER nobody",
        "WORKDIR /alertmanager",
        "VOLUME /alertmanager",
        "EXPOSE 9093",
        'ENTRYPOINT ["/bin/alertmanager"]',
        'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]',
    ),
)

KAFKA: Final = StandIn(
    name="standin-kafka",
    replaces=("confluentinc/cp-zookeeper:7.7.1", "confluentinc/cp-kafka:7.7.1"),
    tag="localhost/iot-standin-kafka:3.9.2",
    packages=("openjdk-17-jre-headless", "netcat-openbsd"),
    hooks=(
        'mkdir -p "$1/usr/share/java/kafka" "$1/etc/confluent/docker" "$1/etc/kafka"'
        ' "$1/var/lib/kafka/data" "$1/var/lib/zookeeper/data" "$1/var/lib/zookeeper/log"',
        f"sync-in {KAFKA_LIBS} /usr/share/java/kafka",
        'rm -f "$1/usr/share/java/kafka/.pom.sha256"',
        f"copy-in {FILES / 'kafka' / 'run'} /etc/confluent/docker",
        "copy-in " + " ".join(str(FILES / "kafka" / tool) for tool in KAFKA_COMMANDS) + " /usr/bin",
        f"copy-in {FILES / 'kafka' / 'tools-log4j.properties'} /etc/kafka",
        'chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/bash appuser',
        'chroot "$1" chown -R appuser:appuser /etc/kafka /var/lib/kafka /var/lib/zookeeper',
        NO_DOCS,
    ),
    inputs=(KAFKA_LIBS, FILES / "kafka"),
    changes=(
        *BASE_CHANGES,
        "USER appuser",
        "WORKDIR /home/appuser",
        "EXPOSE 2181",
        "EXPOSE 2888",
        "EXPOSE 3888",
        "EXPOSE 9092",
        'CMD ["/etc/confluent/docker/run"]',
    ),
)

ALL: Final = (COUCHDB, PROMETHEUS, ALERTMANAGER, KAFKA)


def rootfs(standin: StandIn) -> Path:
    """The stand-in's root filesystem tarball (built with mmdebstrap when its recipe changed)."""
    for path in standin.inputs:
        if not path.exists():
            raise StandInError(f"{path} is missing: `make install` makes it")
    return debian_rootfs(standin.name, standin.packages, customize_hooks=standin.hooks, inputs=standin.inputs)


def ensure_image(
    standin: StandIn,
    engine: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    tag: str | None = None,
) -> str:
    """Make the stand-in `tag` (default `standin.tag`) in an engine; returns the tag.

    engine: the command, e.g. `["docker"]` or `["podman"]`; env: added to the environment of
    each call (e.g. DOCKER_HOST). Nothing is imported when the engine already holds the image of
    the current recipe.
    """
    name = tag or standin.tag
    return import_image(
        rootfs(standin), name, changes=standin.changes, label=KEY_LABEL, engine=engine, env=env
    )


def ensure_all(engine: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every stand-in under its default tag: replaced image -> stand-in tag."""
    images: dict[str, str] = {}
    for standin in ALL:
        tag = ensure_image(standin, engine, env)
        images.update(dict.fromkeys(standin.replaces, tag))
    return images
