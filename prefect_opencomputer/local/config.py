"""How one local server is configured: where its state lives, which key it accepts, what it binds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class LocalServerConfig:
    """Settings of one local OpenComputer-compatible server.

    ``preview_domain`` empty means ``localhost:<port>`` once the port is bound, so preview
    hostnames resolve to this machine without any DNS setup.
    """

    data_dir: Path
    api_key: str
    host: str = "127.0.0.1"
    port: int = 0
    preview_domain: str = ""
    enable_test_routes: bool = False
    region: str = "local"
    max_json_bytes: int = 1 * MIB
    max_file_bytes: int = 1024 * MIB
    limits: bool = True  # per-sandbox cgroups (memory, processes, CPU, freezer); off only when told
    # Every sandbox's disk is at most this big, whatever its diskMB (tests fill a small one quickly).
    max_disk_mb: int | None = None

    def __repr__(self) -> str:
        # The API key never shows in a repr (logs, tracebacks, test output).
        return (
            f"LocalServerConfig(data_dir={self.data_dir!r}, api_key='***', host={self.host!r}, "
            f"port={self.port!r}, preview_domain={self.preview_domain!r}, "
            f"enable_test_routes={self.enable_test_routes!r}, region={self.region!r})"
        )

    @property
    def effective_preview_domain(self) -> str:
        """The domain preview hostnames hang under; defaults to ``localhost:<port>``."""
        return self.preview_domain or f"localhost:{self.port}"
