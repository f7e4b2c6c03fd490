"""``import wstream`` leaves the importing process alone; the ``wstream`` command sets up its own.

Each check runs in a fresh interpreter, without OPENBLAS_THREAD_TIMEOUT in its environment, so
what the import (or the command) does is all there is to see.
"""

from __future__ import annotations

import os
import subprocess
import sys

VAR = "OPENBLAS_THREAD_TIMEOUT"


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != VAR}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_sets_no_environment_variable() -> None:
    code = (
        "import os, wstream, wstream.cli\n"
        "from wstream import open_container, pack, unpack\n"
        f"print(os.environ.get({VAR!r}))"
    )
    assert _python(code) == "None"


def test_the_command_sets_it_for_itself_before_numpy_loads() -> None:
    # The console script's entry point; the values are printed as the process exits.
    code = (
        "import atexit, os, sys\n"
        "from wstream import cli\n"
        "atexit.register(lambda: print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), SEEN))\n"
        "SEEN = 'numpy' in sys.modules\n"
        "sys.argv = ['wstream', '--version']\n"
        "cli.entry()"
    )
    assert _python(code).splitlines()[-1] == "1 False"


def test_an_explicit_setting_wins() -> None:
    code = (
        f"import os; os.environ[{VAR!r}] = '7'\n"
        "from wstream import cli\n"
        f"cli.configure_process()\nprint(os.environ[{VAR!r}])"
    )
    assert _python(code) == "7"


def test_pack_and_unpack_are_the_functions_even_after_their_modules_load() -> None:
    # The import system sets a loaded submodule as an attribute of its package; the package
    # keeps the public names bound to the functions the README shows.
    code = (
        "import inspect, sys\n"
        "import wstream.pack, wstream.unpack, wstream.cli\n"
        "from wstream import pack, unpack\n"
        "import wstream\n"
        "print(inspect.isfunction(pack), inspect.isfunction(unpack), wstream.pack is pack,\n"
        "      inspect.ismodule(sys.modules['wstream.pack']))"
    )
    assert _python(code) == "True True True True"
