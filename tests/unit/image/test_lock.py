"""One lock: requirements.lock is what the host venv runs and all the device needs.

The image installs exactly the pinned wheels (no dependency resolution for the device), so
the lock must be closed under the runtime requirements as they apply on the device
(CPython 3.11, Linux, aarch64): a missing transitive dependency would be a
ModuleNotFoundError on the board only. And the host venv must run the same versions, or the
host tests test something else than what ships.
"""

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from appliance.image.lock import normalise as _norm
from appliance.image.lock import read

LOCK = Path(__file__).resolve().parents[3] / "requirements.lock"
DEVICE = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "platform_machine": "aarch64",
    "os_name": "posix",
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "extra": "",
}


def test_host_venv_runs_exactly_the_locked_versions() -> None:
    drift = {
        name: (version, metadata.version(name))
        for name, version in read(LOCK).items()
        if metadata.version(name) != version
    }
    assert drift == {}


def test_lock_holds_every_runtime_requirement_of_what_it_pins() -> None:
    lock = read(LOCK)
    missing = set()
    for name in lock:
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(DEVICE):
                continue
            if _norm(req.name) not in lock:
                missing.add(f"{req.name} (required by {name})")
            elif not req.specifier.contains(lock[_norm(req.name)], prereleases=True):
                missing.add(f"{req.name}=={lock[_norm(req.name)]} does not satisfy {text}")
    assert sorted(missing) == []


def test_the_projects_own_dependencies_are_all_pinned() -> None:
    lock = read(LOCK)
    for text in metadata.requires("infraspectre-edge") or []:
        req = Requirement(text)
        if req.marker is None:
            assert _norm(req.name) in lock, f"{req.name} is a dependency but not in the lock"
