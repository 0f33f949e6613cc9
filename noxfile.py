"""Sessions: lint, typing, build, tests, django_tests (the matrix), ecosystem; demo, soak, bench."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # the first with download_python
nox.options.error_on_missing_interpreters = True
# An interpreter of the matrix that nox cannot find is fetched by uv (a
# python-build-standalone build) where this machine can reach it; where it
# cannot, the session fails all the same. `--download-python never` (or
# NOX_DOWNLOAD_PYTHON=never) forbids the download.
nox.options.download_python = "auto"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typing", "build", "tests", "django_tests", "ecosystem"]

ROOT = Path(__file__).parent
DIST = ROOT / "dist"
DJANGO_SDISTS = ROOT / ".nox" / "_django_sdists"

# SPEC 6: every supported (Python, Django) pair.
MATRIX = [
    *(("3.9", "4.2"), ("3.10", "4.2"), ("3.11", "4.2"), ("3.12", "4.2")),
    *(("3.10", "5.2"), ("3.11", "5.2"), ("3.12", "5.2"), ("3.13", "5.2")),
    *(("3.12", "6.0"), ("3.13", "6.0")),
    *(("3.12", "6.1"), ("3.13", "6.1")),
    *(("3.14", "5.2"), ("3.14", "6.0"), ("3.14", "6.1"), ("3.15", "6.1")),
]
PYTHONS = sorted({python for python, _ in MATRIX}, key=lambda v: tuple(map(int, v.split("."))))
TYPING_PYTHON, TYPING_DJANGO = "3.13", "6.1"
DEMO_PYTHON, DEMO_DJANGO = "3.12", "5.2"
BENCH_PAIRS = [("3.12", "6.1"), ("3.12", "5.2"), ("3.14", "6.1")]
# Where .ci/run has ../shared/tools/sid-python.sh install the Pythons pyenv
# lacks (3.14, 3.15 on Debian 12).
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
SID_PYTHON_PREFIX = CACHE / "structured-signals" / "python"
TEST_REQUIREMENTS = [
    "pytest>=8",
    "hypothesis>=6.100",
    "uvloop>=0.19",
    "uvicorn>=0.30",
    "httpx>=0.27",
    # Libraries whose context managers the shared-mode journal is tested with.
    "opentelemetry-sdk>=1.20",
    "sentry-sdk>=2.0",
]
# The packages projects run beside us (README, "Works with"); the toolbar's
# other major version is installed for a second run of its tests.
ECOSYSTEM_PYTHON, ECOSYSTEM_DJANGOS = "3.12", ["6.1", "5.2"]
ECOSYSTEM_REQUIREMENTS = [
    "hypercorn~=0.18",
    "daphne~=4.2",
    "granian~=2.8",
    "channels~=4.3",
    "sentry-sdk~=2.75",
    "opentelemetry-sdk~=1.45",
    "opentelemetry-instrumentation-django~=0.66b1",
    "opentelemetry-instrumentation-asgi~=0.66b1",
    "ddtrace~=4.16",
    "django-debug-toolbar~=8.0",
    "pytest-django~=4.14",
    "pytest-timeout>=2.3",
]
OTHER_TOOLBAR = "django-debug-toolbar~=6.0"


def _expose_interpreters() -> None:
    """Put each python3.X of the matrix that pyenv or .ci/run installed on PATH.

    nox looks interpreters up on PATH, where pyenv shows only the versions it
    has selected (the others are shims that fail); the real binaries are under
    $(pyenv root)/versions. The ones .ci/run installed with sid-python.sh go
    last on PATH: an interpreter already there comes first. A missing one
    still fails the session.
    """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    links = ROOT / ".nox" / "_interpreters"
    if versions.is_dir():
        links.mkdir(parents=True, exist_ok=True)
    for python in PYTHONS:
        link = links / f"python{python}"
        if link.is_symlink() and not link.exists():
            link.unlink()  # that pyenv version is gone
        if link.is_symlink():
            continue
        installed = sorted(versions.glob(f"{python}.*/bin/python{python}"))
        if installed:
            link.symlink_to(installed[-1])
    os.environ["PATH"] = os.pathsep.join(
        [str(links), os.environ.get("PATH", ""), str(SID_PYTHON_PREFIX / "bin")]
    )


_expose_interpreters()


def _django_requirement(django: str) -> str:
    return f"django~={django}.0"


def _wheel() -> Path:
    wheels = sorted(DIST.glob("structured_signals-*.whl"))
    if not wheels:
        raise RuntimeError("no wheel in dist/: run `nox -s build` first")
    return wheels[-1]


@nox.session(python=TYPING_PYTHON)
def lint(session: nox.Session) -> None:
    """Check lint and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=TYPING_PYTHON)
def typing(session: nox.Session) -> None:
    """Type-check the package and the tests with mypy --strict."""
    session.install(
        "-e",
        ".",
        _django_requirement(TYPING_DJANGO),
        "mypy",
        "django-stubs",
        "nox",
        "matplotlib",
        *TEST_REQUIREMENTS,
        *ECOSYSTEM_REQUIREMENTS,
    )
    session.run("mypy")


@nox.session(python=TYPING_PYTHON)
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, and check that the wheel ships py.typed."""
    shutil.rmtree(DIST, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--outdir", str(DIST))
    names = zipfile.ZipFile(_wheel()).namelist()
    if "structured_signals/py.typed" not in names:
        session.error(f"the wheel lacks structured_signals/py.typed: {names}")


@nox.session(requires=["build"])
@nox.parametrize(("python", "django"), MATRIX, ids=[f"{p}-django{d}" for p, d in MATRIX])
def tests(session: nox.Session, django: str) -> None:
    """Run the test suite against the built wheel, on one Python and Django."""
    session.install(str(_wheel()), _django_requirement(django), *TEST_REQUIREMENTS)
    session.run("pytest", *session.posargs)


# Django's own tests of code that sends, receives or overrides signals or
# settings, or serves requests (README, "Development": why each, what was left
# out for time). The same labels exist in every Django of the matrix.
DJANGO_TEST_LABELS = (
    # Signals themselves, and the ASGI handler.
    *("dispatch", "signals", "asgi", "handlers"),
    # setting_changed: override_settings, its receivers' stacklevel.
    *("settings_tests", "test_utils"),
    # Model and migration signals sent by the ORM, and auth's.
    *("migrate_signals", "m2m_signals", "delete", "delete_regress"),
    *("update_only_fields", "proxy_models", "fixtures_regress", "auth_tests.test_signals"),
    # request_started/request_finished from sync code: WSGI, the test client.
    *("wsgi", "builtin_server", "requests_tests", "test_client", "test_client_regress"),
    "middleware",
)


@nox.session(requires=["build"])
@nox.parametrize(("python", "django"), MATRIX, ids=[f"{p}-django{d}" for p, d in MATRIX])
def django_tests(session: nox.Session, django: str) -> None:
    """Run Django's own signal, settings and request tests, structured."""
    session.install(str(_wheel()), _django_requirement(django))
    version = session.run("python", "-c", "import django; print(django.__version__)", silent=True)
    assert isinstance(version, str)
    tests_dir = _django_tests_dir(session, version.strip())
    session.run(
        "python",
        str(ROOT / "tests" / "django_suite.py"),
        str(tests_dir),
        *DJANGO_TEST_LABELS,
    )


def _django_tests_dir(session: nox.Session, version: str) -> Path:
    """Django's tests/ of `version`, from its source distribution on PyPI."""
    unpacked = DJANGO_SDISTS / version
    if not unpacked.is_dir():
        download = DJANGO_SDISTS / f"{version}.download"
        shutil.rmtree(download, ignore_errors=True)
        session.run(
            sys.executable,
            *("-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:"),
            *("--ignore-requires-python", "--dest", str(download), f"django=={version}"),
            external=True,
        )
        (sdist,) = download.glob("*.tar.gz")
        shutil.unpack_archive(sdist, download)
        sdist.unlink()
        download.rename(unpacked)
    (runtests,) = unpacked.glob("*/tests/runtests.py")
    return runtests.parent


@nox.session(python=ECOSYSTEM_PYTHON)
@nox.parametrize("django", ECOSYSTEM_DJANGOS)
def ecosystem(session: nox.Session, django: str) -> None:
    """Our promise and each package's own under ASGI servers, Channels, APMs, the toolbar."""
    session.install(".", _django_requirement(django), *TEST_REQUIREMENTS, *ECOSYSTEM_REQUIREMENTS)
    session.chdir(ROOT / "ecosystem")
    session.run("pytest", *session.posargs)
    session.install(OTHER_TOOLBAR)
    session.run("pytest", "test_debug_toolbar.py")


@nox.session(python=DEMO_PYTHON)
def demo(session: nox.Session) -> None:
    """Show, side by side, what Django's own handler and signals lose and we keep."""
    session.install(".", _django_requirement(DEMO_DJANGO), "uvicorn", "httpx")
    session.run("python", str(ROOT / "demo" / "ticket_36714.py"))


@nox.session(python=DEMO_PYTHON)
def soak(session: nox.Session) -> None:
    """Soak: a million dispatches per mode (memory), 20,000 requests under uvicorn."""
    session.install(".", _django_requirement(DEMO_DJANGO), "uvicorn", "httpx")
    session.run("python", "benchmarks/memory.py", "--dispatches", "1000000")
    session.run("python", "benchmarks/soak.py", "--requests", "20000", "--connections", "64")


@nox.session
@nox.parametrize(("python", "django"), BENCH_PAIRS, ids=[f"{p}-django{d}" for p, d in BENCH_PAIRS])
def bench(session: nox.Session, django: str) -> None:
    """Benchmarks: dispatch against Django's own asend, and end to end under uvicorn."""
    session.install(".", _django_requirement(django), "matplotlib", "uvicorn", "httpx")
    session.run("python", "benchmarks/dispatch.py", "--rounds", "15")
    session.run("python", "benchmarks/end_to_end.py", "--rounds", "30", "--requests", "3000")
