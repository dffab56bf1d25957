"""A stand-in for Apache Kafka's release archive, assembled from the jars Maven Central resolves:
Kafka 3.9.2 from `deploy/local/.kafka/libs`, Kafka 4.4.0 from `deploy/local/.kafka4/libs`.

The Ansible role `kafka` installs `kafka_<scala>-<version>.tgz` from `kafka_archive_url`,
checked against `kafka_archive_sha512`. archive.apache.org cannot be reached from the tests, so
`build_kafka_release` assembles an archive in Apache's layout from `deploy/local/.kafka/libs`
(what `deploy/local/stack.sh install` resolves from Maven Central with `deploy/local/pom.xml`).
The role needs only `libs/`: its units and tasks run `java -cp "<home>/libs/*" <main class>`.

How it differs from Apache's `kafka_2.13-3.9.2.tgz` (and in the same ways from 4.4.0's, whose
`config/` has `log4j2.yaml` where this one has its own short `log4j.properties`, unused by the role):

- No `bin/` (and so no `bin/windows/`): none of Apache's shell scripts (`kafka-server-start.sh`,
  `kafka-topics.sh`, `kafka-run-class.sh`, ...). Run the main classes with java instead.
- `config/` holds only `log4j.properties`, a short file of this module's own (root logger INFO
  to stdout and `${kafka.logs.dir}/server.log`), not Apache's: no `server.properties`,
  `zookeeper.properties`, `kraft/`, `connect-*.properties`, `tools-log4j.properties`,
  `connect-log4j.properties`, `consumer.properties`, `producer.properties`, `trogdor.conf`, ...
- No `site-docs/`, no `licenses/`, no `LICENSE`, no `NOTICE`.
- `libs/` holds exactly the `*.jar` files of the folder given (plus `extra_jars`), as Maven
  resolved them: the runtime class path of `org.apache.kafka:kafka_2.13` plus `slf4j-reload4j`
  and `reload4j`, and whatever else `pom.xml` lists. `kafka-tools-<version>.jar` must be among
  them (the role runs TopicCommand from it; `kafka_2.13` does not depend on it). Apache's
  `libs/` has more: Kafka Connect (`connect-*`), Kafka Streams (`kafka-streams*`),
  `kafka-shell`, `trogdor`, `kafka-log4j-appender`, and their own dependencies (Jetty, Jersey,
  HK2, the Jakarta/javax APIs, jackson-jaxrs, RocksDB JNI, jline, reflections, maven-artifact,
  plexus-utils, swagger-annotations, ...); `pom.xml` takes `kafka-tools` without its dependencies.
- Versions of third-party jars may differ from the release's: Maven takes the version declared
  nearest to the root, while Apache's build (Gradle) takes the highest one requested plus the
  versions Kafka's build pins. Kafka 3.9.2's own POM does not declare netty, so Maven takes
  ZooKeeper 3.8.4's (netty 4.1.105.Final) where the release may bundle a newer netty; the same can
  hold for other transitive jars (lz4-java, commons-*, snappy-java, zstd-jni). Kafka's and
  ZooKeeper's own jars are the same artifacts as in the release.
- Made to be reproducible: entries sorted, owned by 0:0 with no user or group names, modes
  0755 (folders) and 0644 (files), every time stamp `MTIME`, a gzip header without name or time.
  The same jars give the same bytes, so the same SHA-512.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

# 2024-01-01T00:00:00Z: any fixed time will do; 0 (1970) upsets some tar implementations.
MTIME = 1_704_067_200

LOG4J_PROPERTIES = """\
# Stand-in for Apache Kafka's config/log4j.properties (tests/e2e/kafka_release.py).
log4j.rootLogger=INFO, stdout, kafkaAppender

log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.appender.kafkaAppender=org.apache.log4j.DailyRollingFileAppender
log4j.appender.kafkaAppender.DatePattern='.'yyyy-MM-dd-HH
log4j.appender.kafkaAppender.File=${kafka.logs.dir}/server.log
log4j.appender.kafkaAppender.layout=org.apache.log4j.PatternLayout
log4j.appender.kafkaAppender.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


class KafkaReleaseError(Exception):
    """The jars at hand cannot make a release archive the role can run."""


def build_kafka_release(
    libs_dir: Path,
    out_dir: Path,
    *,
    version: str = "3.9.2",
    scala: str = "2.13",
    extra_jars: Iterable[Path] = (),
) -> tuple[Path, str]:
    """Write `<out_dir>/kafka_<scala>-<version>.tgz` from the jars in LIBS_DIR (and EXTRA_JARS).

    Returns the archive's path and its SHA-512 (hex), for `kafka_archive_url` and
    `kafka_archive_sha512`. Raises KafkaReleaseError when a jar the role runs is missing.
    """
    jars = {jar.name: jar for jar in sorted(libs_dir.glob("*.jar"))}
    jars.update({jar.name: jar for jar in extra_jars})
    required = (f"kafka_{scala}-{version}.jar", f"kafka-tools-{version}.jar")
    missing = [name for name in required if name not in jars]
    if missing:
        raise KafkaReleaseError(
            f"{libs_dir} lacks {', '.join(missing)}. The role runs kafka.Kafka (kafka_{scala}) and "
            f"TopicCommand (kafka-tools): add org.apache.kafka:kafka-tools:{version} to "
            "deploy/local/pom.xml, or pass the jar in extra_jars"
        )

    top = f"kafka_{scala}-{version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{top}.tgz"
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    # mtime=0 and no file name: the gzip header is the same on every build.
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for folder in (top, f"{top}/config", f"{top}/libs"):
            tar.addfile(_entry(folder, tarfile.DIRTYPE, 0o755))
        data = LOG4J_PROPERTIES.encode()
        tar.addfile(_entry(f"{top}/config/log4j.properties", size=len(data)), io.BytesIO(data))
        for name in sorted(jars):
            path = jars[name]
            with path.open("rb") as jar:
                tar.addfile(_entry(f"{top}/libs/{name}", size=path.stat().st_size), jar)
    partial.replace(archive)
    return archive, _sha512(archive)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
