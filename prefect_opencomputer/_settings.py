"""Every environment variable the integration reads or sets, with its default: the one place to look.

Modules import the names from here and never spell them (a test walks the package for strays), so renaming
a variable, or finding every reader of one, is a search for its constant.
"""

from __future__ import annotations

from typing import Final

# -- Where the client connects (read by the client, the credentials block, the tasks, the worker) ---------

# The API key sent as X-API-Key; unset: none, and tasks refuse to run without a key or a URL.
API_KEY_ENV: Final = "OPENCOMPUTER_API_KEY"
# The service's base URL (the hosted service or a local server); `/api` is appended unless already there.
API_URL_ENV: Final = "OPENCOMPUTER_API_URL"
# Where the client connects when neither a block nor the environment names a URL: the hosted service.
DEFAULT_API_URL: Final = "https://app.opencomputer.dev"
# Seconds one HTTP request may take before the client gives up (the block's `request_timeout` default).
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
# The name of a saved OpenComputerCredentials block to use when code gives none (tasks, flows, hooks, CLI).
CREDENTIALS_BLOCK_ENV: Final = "OPENCOMPUTER_CREDENTIALS_BLOCK"

# -- The integration's own knobs --------------------------------------------------------------------------

# US dollars per GB-hour of memory in the run report and `usage`; unset: the hosted on-demand rate below.
USD_PER_GB_HOUR_ENV: Final = "OPENCOMPUTER_USD_PER_GB_HOUR"
# OpenComputer's published on-demand ("instant") rate: $0.060 per GB-hour (its documentation, "Reserved
# capacity" overview, on-demand vs pre-booked rates).
DEFAULT_USD_PER_GB_HOUR: Final = 0.060
# Seconds after which a sandbox whose owner's lease went unrenewed is an orphan the reaper may kill.
ORPHAN_AFTER_ENV: Final = "PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS"
# Long enough that a busy process renews many times over; short enough that a crashed run's sandboxes
# do not bill for long.
DEFAULT_ORPHAN_AFTER_SECONDS: Final = 300.0
# Set inside a sandbox (not read here): the marker by which a retried create recognises its own sandbox.
CREATE_MARKER_ENV: Final = "PREFECT_OPENCOMPUTER_CREATE_ID"

# -- The local server -------------------------------------------------------------------------------------

# The key `prefect-opencomputer local serve` accepts (what its clients send as OPENCOMPUTER_API_KEY);
# unset: a random one, printed once. An environment variable, since a command line is visible to all.
LOCAL_API_KEY_ENV: Final = "OPENCOMPUTER_LOCAL_API_KEY"
# Where built root filesystems are cached; unset: $XDG_CACHE_HOME/prefect-opencomputer (~/.cache/...).
ROOTFS_CACHE_ENV: Final = "PREFECT_OPENCOMPUTER_CACHE"
