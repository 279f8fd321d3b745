"""How one local server is configured: where its state lives, which key it accepts, what it binds.

`LocalServerConfig` is the one declaration of the server's settings and their defaults: `LocalServer`
takes one, and ``prefect-opencomputer local serve`` builds one from its options (whose defaults it reads
from here).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
# The name by which a sandbox reaches the host's loopback ports the server was told to open to it.
HOST_ALIAS = "host.opencomputer.internal"


def new_api_key() -> str:
    """A random key in the hosted service's format (``osb_`` + 64 hex)."""
    return "osb_" + secrets.token_hex(32)


@dataclass(frozen=True)
class LocalServerConfig:
    """Settings of one local OpenComputer-compatible server.

    ``api_key`` unset is a fresh random key (read it back from the config, or from ``LocalServer.api_key``).
    ``port`` 0 binds a free port. ``preview_domain`` empty means ``localhost:<port>`` once the port is
    bound, so preview hostnames resolve to this machine without any DNS setup.
    """

    data_dir: Path
    api_key: str = field(default_factory=new_api_key)
    host: str = "127.0.0.1"
    port: int = 0
    preview_domain: str = ""
    enable_test_routes: bool = False
    region: str = "local"
    # Far above any hosted use (a 1.5 MB patch script, an image with inline files), still bounded.
    max_json_bytes: int = 64 * MIB
    max_file_bytes: int = 1024 * MIB
    limits: bool = True  # per-sandbox cgroups (memory, processes, CPU, freezer); off only when told
    # Networks in special ranges that sandboxes may reach all the same (a lab's "internet").
    egress_allow: tuple[str, ...] = ()
    # How long one step of a file call may take (its agent killed then) before a retryable 503.
    file_operation_timeout: float = 30.0
    # The hosted service's default cap on running sandboxes per organisation (429 past it).
    max_running_sandboxes: int = 50
    # How often the memory of every running sandbox is sampled for usage (hosted: every 60 s).
    usage_sample_seconds: float = 15.0
    # Every sandbox's disk is at most this big, whatever its diskMB (tests fill a small one quickly).
    max_disk_mb: int | None = None
    # Host loopback ports sandboxes may reach at HOST_ALIAS (a local Prefect API); none by default.
    allow_host_ports: tuple[int, ...] = ()
    # Sandboxes of the default shape booted ahead of their create, as the hosted edge keeps a warm
    # pool: a create of that shape takes one instead of booting (0 turns it off).
    warm_sandboxes: int = 2

    def __repr__(self) -> str:
        # The API key never shows in a repr (logs, tracebacks, test output).
        return (
            f"LocalServerConfig(data_dir={self.data_dir!r}, api_key='***', host={self.host!r}, "
            f"port={self.port!r}, preview_domain={self.preview_domain!r}, "
            f"enable_test_routes={self.enable_test_routes!r}, region={self.region!r}, "
            f"max_running_sandboxes={self.max_running_sandboxes!r})"
        )

    @property
    def url(self) -> str:
        """The server's base URL, ``http://host:port`` (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def effective_preview_domain(self) -> str:
        """The domain preview hostnames hang under; defaults to ``localhost:<port>``."""
        return self.preview_domain or f"localhost:{self.port}"
