"""Assemble a KRaft-capable Apache Kafka distribution from Maven Central jars.

Kafka has no Debian package and the lab hosts reach nothing but the Debian mirror,
so the controller resolves the broker, the storage tool and the admin tools (with
all their runtime dependencies) through Maven, adds thin launcher scripts and a
log4j2 configuration, and packs everything as ``kafka_2.13-<version>.tgz`` with
the same top-level layout as the Apache release archive (``bin/``, ``libs/``,
``config/``).  The ``kafka`` role installs it from that local archive.

The archive is reproducible (sorted entries, fixed mtimes, no owner names), so
rebuilding it from the same jars gives the same SHA-256 and Ansible's copy stays
idempotent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

KAFKA_VERSION = os.environ.get("LOADGEN_KAFKA_VERSION", "4.4.0")
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>loadgen.lab</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# Launchers: the release's bin/kafka-run-class.sh does far more; these do what the
# role and the probes need, with the class names of Kafka 4.x.
_RUN_CLASS = """#!/bin/sh
# Minimal kafka-run-class.sh: run CLASS with every jar in libs/ on the classpath.
base_dir=$(CDPATH= cd -- "$(dirname -- "$(readlink -f -- "$0")")/.." && pwd)
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.properties}"
: "${JAVA:=java}"
class=$1; shift
exec "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS $KAFKA_LOG4J_OPTS $KAFKA_OPTS \\
    -cp "$base_dir/libs/*" "$class" "$@"
"""

_LAUNCHERS = {
    "kafka-server-start.sh": (
        'base_dir=$(CDPATH= cd -- "$(dirname -- "$(readlink -f -- "$0")")/.." && pwd)\n'
        ': "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/log4j2.properties}"\n'
        "export KAFKA_LOG4J_OPTS\n"
        'exec "$base_dir/bin/kafka-run-class.sh" kafka.Kafka "$@"\n'
    ),
    "kafka-storage.sh": 'exec "$(dirname -- "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"\n',
    "kafka-topics.sh": 'exec "$(dirname -- "$0")/kafka-run-class.sh" org.apache.kafka.tools.TopicCommand "$@"\n',
    "kafka-metadata-quorum.sh": (
        'exec "$(dirname -- "$0")/kafka-run-class.sh" org.apache.kafka.tools.MetadataQuorumCommand "$@"\n'
    ),
    "kafka-broker-api-versions.sh": (
        'exec "$(dirname -- "$0")/kafka-run-class.sh" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"\n'
    ),
}

_LOG4J = """status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
"""


def _run(cmd: list[str], cwd: Path, quiet: bool) -> None:
    if not quiet:
        subprocess.run(cmd, cwd=cwd, check=True)
        return
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}")


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_kafka_archive(out_dir: Path, version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Return the path of ``kafka_2.13-<version>.tgz`` in *out_dir*, building it if missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"kafka_{SCALA_VERSION}-{version}"
    archive = out_dir / f"{name}.tgz"
    recipe_file = out_dir / f"{name}.recipe"
    recipe = hashlib.sha256(repr((_POM, _RUN_CLASS, _LAUNCHERS, _LOG4J, version, LOG4J_VERSION)).encode()).hexdigest()
    if archive.exists() and recipe_file.exists() and recipe_file.read_text().strip() == recipe:
        return archive
    work = out_dir / f"{name}.build"
    shutil.rmtree(work, ignore_errors=True)
    libs = work / name / "libs"
    libs.mkdir(parents=True)
    (work / "pom.xml").write_text(_POM.format(scala=SCALA_VERSION, kafka=version, log4j=LOG4J_VERSION))
    cmd = ["mvn", "-B", "-Dstyle.color=never", "--no-transfer-progress", "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
           "-DincludeScope=runtime"]
    _run(cmd, work, quiet)
    jars = sorted(p.name for p in libs.glob("*.jar"))
    if not any(j.startswith(f"kafka_{SCALA_VERSION}-{version}") for j in jars):
        raise RuntimeError(f"maven did not deliver kafka_{SCALA_VERSION}-{version}.jar: {jars}")
    bindir = work / name / "bin"
    bindir.mkdir()
    (bindir / "kafka-run-class.sh").write_text(_RUN_CLASS)
    for script, body in _LAUNCHERS.items():
        (bindir / script).write_text("#!/bin/sh\n" + body)
    for f in bindir.iterdir():
        f.chmod(0o755)
    config = work / name / "config"
    config.mkdir()
    (config / "log4j2.properties").write_text(_LOG4J.format(level="info"))
    (config / "tools-log4j2.properties").write_text(_LOG4J.format(level="warn"))
    (work / name / "VERSION").write_text(
        f"Apache Kafka {version} (Scala {SCALA_VERSION}) assembled from Maven Central jars by loadgen.lab\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted((work / name).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(work)), recursive=False, filter=_tar_filter)
    tmp = archive.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    tmp.rename(archive)
    recipe_file.write_text(recipe + "\n")
    shutil.rmtree(work)
    return archive


def new_cluster_id(random_bytes=os.urandom) -> str:
    """A KRaft cluster id: 16 random bytes as 22 characters of URL-safe base64 (Kafka's Uuid form).

    Never starting with '-', as Kafka's own `kafka-storage.sh random-uuid` guarantees: such an id (1 in
    64 draws) is read as an option by the tools' argument parser when passed as a separate argument.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).decode()[:22]
        if not cluster_id.startswith("-"):
            return cluster_id


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
