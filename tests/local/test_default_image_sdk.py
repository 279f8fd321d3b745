"""The default image's libraries and locale, checked as the official SDK's own default-template test does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow

# Builds only where the headers and the libraries behind them are both there.
LIBRARIES_PROGRAM = """
#include <ffi.h>
#include <openssl/ssl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <zlib.h>

int main(void) {
    ffi_cif cif;
    int ffi_ok = ffi_prep_cif(&cif, FFI_DEFAULT_ABI, 0, &ffi_type_void, NULL) == FFI_OK;
    printf("%s|%s|%s|%d\\n", OpenSSL_version(OPENSSL_VERSION), zlibVersion(), sqlite3_libversion(), ffi_ok);
    return 0;
}
"""


@pytest.fixture
async def default_sandbox(local_server: LocalServer) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(
        template="default", api_url=local_server.url, api_key=local_server.api_key, timeout=300
    )
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_native_build_headers_are_there_as_in_the_hosted_image(default_sandbox: Sandbox) -> None:
    # The SDK example's own checks, word for word.
    ssl = await default_sandbox.commands.run("test -f /usr/include/openssl/ssl.h && echo ok")
    ffi = await default_sandbox.commands.run(
        "test -f /usr/include/ffi.h && echo ok || (dpkg -L libffi-dev 2>/dev/null | grep ffi.h | head -1)"
    )
    zlib = await default_sandbox.commands.run("test -f /usr/include/zlib.h && echo ok")
    assert (ssl.stdout, zlib.stdout) == ("ok\n", "ok\n")
    assert "ffi" in ffi.stdout

    await default_sandbox.files.write("/tmp/libs.c", LIBRARIES_PROGRAM)
    built = await default_sandbox.commands.run(
        "gcc -o /tmp/libs /tmp/libs.c -lssl -lcrypto -lffi -lz -lsqlite3 && /tmp/libs"
    )
    assert built.exit_code == 0, built.stderr
    openssl, zlib_version, sqlite, ffi_ok = built.stdout.strip().split("|")
    assert openssl.startswith("OpenSSL 3.") and zlib_version and sqlite.startswith("3.") and ffi_ok == "1"


async def test_en_us_utf8_is_generated_and_the_default(default_sandbox: Sandbox) -> None:
    available = await default_sandbox.commands.run("locale -a 2>&1 | grep -i en_US.utf8")
    assert "en_US" in available.stdout
    # No "cannot set LC_..." warnings: the locale the environment names exists.
    current = await default_sandbox.commands.run("locale; cat /etc/default/locale")
    assert current.stderr == ""
    assert "LANG=en_US.UTF-8" in current.stdout.splitlines()
    assert current.stdout.rstrip().endswith("LANG=en_US.UTF-8")
    python = await default_sandbox.commands.run(
        'python3 -c \'import locale; print(locale.setlocale(locale.LC_ALL, ""), "é".upper())\''
    )
    assert python.stdout == "en_US.UTF-8 É\n"
