"""A Debian container booted with systemd as PID 1 (systemd-nspawn on a debootstrapped rootfs), for the unit tests.

The rootfs is built once by debootstrap from the mirror apt already uses and cached outside the repository
(`$ROOTFS_CACHE`, default /var/cache/mailhook-ci-rootfs); each boot runs on a throw-away overlay of it
(`--volatile=overlay`), with its own network namespace (loopback only), so ports 25 and 8080 are its own.
The host needs no systemd of its own: the container is driven with `nsenter` into its PID 1's namespaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from process_support import wait_until

SUITE = "bookworm"
# What the tests run inside the container, besides systemd: python3-venv for the docs' install, swaks and
# curl as clients, sqlite3 to look into the database, iproute2 for `ss` (a listener's backlog).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3-venv", "swaks", "curl", "sqlite3", "iproute2",
            "ca-certificates")
# Not MAILHOOK_*: mailhook refuses variables of its prefix that it does not know.
CACHE = Path(os.environ.get("ROOTFS_CACHE", "/var/cache/mailhook-ci-rootfs"))
# Commands run inside get a root shell's environment, not the test's (whose MAILHOOK_*, PIP_* ... are the host's).
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
ROOT = Path(__file__).resolve().parent.parent
HOST_CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


def cannot_run() -> str | None:
    """Return why this machine cannot boot a container, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn and debootstrap)"
    for command, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                             ("nsenter", "util-linux")):
        if shutil.which(command) is None:
            return f"needs {command} (Debian package {package}; .ci/run installs it)"
    return None


def mirror() -> str:
    """Return the Debian mirror apt is configured with (so debootstrap fetches from nowhere else)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file() or source.suffix not in {"", ".list", ".sources"}:
            continue
        text = source.read_text(errors="replace")
        found = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        for uri in found:
            if re.search(r"/debian/?$", uri):
                return uri
    return "http://deb.debian.org/debian"


def rootfs() -> Path:
    """Return the cached rootfs, building it with debootstrap first if this machine has none yet."""
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    done = CACHE / f"{SUITE}-{key}"
    if (done / "usr/lib/systemd/systemd").exists():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f"{done.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    made = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building), mirror()],
        capture_output=True, text=True, timeout=1800,
    )
    if made.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}")
    shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
    try:
        building.rename(done)
    except OSError:  # another run built it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return done


def copy_source(to: Path) -> Path:
    """Copy the working tree's source (what `pip install` needs, no venv or caches) to `to`."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", ".*_cache")
    shutil.copytree(ROOT, to, ignore=ignore)
    return to


class Container:
    """One booted container: `run()` executes a command inside it as root, like a shell on the machine."""

    def __init__(self, root: Path, binds: dict[str, Path], log: Path) -> None:
        self.root, self.binds, self.log = root, binds, log
        self.machine = f"mailhook-ci-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def probe(self) -> str | None:
        """Return why systemd-nspawn cannot start a container on this machine, or None when it can."""
        done = subprocess.run(
            ["systemd-nspawn", "--quiet", "-D", str(self.root), "--volatile=overlay", "--register=no", "--keep-unit",
             f"--machine={self.machine}-probe", "--pipe", "--", "/bin/true"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        return None if done.returncode == 0 else f"systemd-nspawn cannot start a container here: {done.stderr.strip()}"

    def install(self, command: str) -> None:
        """Run `command` in a one-off container with the host's network (PyPI), before booting.

        pip there trusts what the host trusts (a proxy's own CA, say): the host's CA bundle is lent to it.
        """
        trust = []
        if HOST_CA.is_file():
            trust = [f"--bind-ro={HOST_CA}:/etc/ssl/host-ca.crt", "--setenv=PIP_CERT=/etc/ssl/host-ca.crt"]
        done = subprocess.run(
            ["systemd-nspawn", "--quiet", "-D", str(self.root), "--volatile=overlay", "--register=no", "--keep-unit",
             f"--machine={self.machine}-setup", *self._bind_options(), *trust, "--pipe", "--",
             "/bin/sh", "-ec", command],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    def boot(self) -> None:
        """Boot systemd as PID 1 with loopback-only networking and wait until the system is up."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), "--boot", "--volatile=overlay",
                 "--private-network", "--register=no", "--keep-unit", f"--machine={self.machine}",
                 *self._bind_options()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self.pid = wait_until(self._init, 60, "the container's systemd")
        wait_until(lambda: self.state() in {"running", "degraded"}, 120, "the container's boot")

    def state(self) -> str:
        return self.run("systemctl", "is-system-running", check=False).stdout.strip()

    def _init(self) -> int:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if not children or Path(f"/proc/{children[0]}/comm").read_text().strip() != "systemd":
            return 0
        return int(children[0])

    def _bind_options(self) -> list[str]:
        return [f"--bind={source}:{target}" for target, source in self.binds.items()]

    def run(self, *command: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the booted container as root (all its namespaces) and return what it did."""
        done = subprocess.run(self.command(*command), capture_output=True, text=True, timeout=timeout, input=input,
                              env=ENV)
        if check:
            assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def command(self, *command: str) -> list[str]:
        """Return the host command line that runs `command` inside the container (with `env=ENV`)."""
        return ["nsenter", "-t", str(self.pid), "-a", *command]

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """Return `systemctl show` properties of `unit`."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def shutdown(self) -> None:
        """Power the container off (killing it if it does not go within a minute)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # systemd-nspawn asks the container's systemd to power off
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
