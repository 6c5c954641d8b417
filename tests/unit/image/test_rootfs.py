"""Root tree helpers that read files only: module load order, busybox applet table; the card's
Python allow-list (what ships, and that the shipped package runs without the development kit)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import rootfs

VERSION = "6.1.0-test-arm64"


def _modules_dep(tmp_path: Path, text: str) -> Path:
    mdir = tmp_path / "usr/lib/modules" / VERSION
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text(text)
    return tmp_path


def test_dependencies_load_before_the_module_and_only_once(tmp_path: Path) -> None:
    root = _modules_dep(
        tmp_path,
        "kernel/a/cdc_ether.ko: kernel/a/usbnet.ko kernel/a/mii.ko\n"
        "kernel/a/usbnet.ko: kernel/a/mii.ko\n"
        "kernel/a/mii.ko:\n"
        "kernel/b/phy-generic.ko:\n",
    )
    order = rootfs.module_load_order(root, VERSION, ["phy_generic", "cdc_ether", "usbnet"])
    assert order == [
        "kernel/b/phy-generic.ko",
        "kernel/a/mii.ko",
        "kernel/a/usbnet.ko",
        "kernel/a/cdc_ether.ko",
    ]


def test_an_unknown_module_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _modules_dep(tmp_path, "kernel/a/mii.ko:\n")
    with pytest.raises(CommandError, match="no module squashfs"):
        rootfs.module_load_order(root, VERSION, ["squashfs"])


def test_busybox_applets_are_read_from_the_binarys_name_table(tmp_path: Path) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF junk\0\0[\0[[\0acpid\0ash\0udhcpc\0zcat\0\x01\x02tail")
    assert rootfs.busybox_applets(binary) == ["[", "[[", "acpid", "ash", "udhcpc", "zcat"]


def test_a_binary_without_an_applet_table_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF nothing here")
    with pytest.raises(CommandError, match="no applet table"):
        rootfs.busybox_applets(binary)


PACKAGE = Path(rootfs.__file__).resolve().parents[1]


def _appliance_imports(path: Path, module: str) -> set[str]:
    """Every appliance.* module path imports, at the top or inside functions, relative or not."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "appliance" or n.startswith("appliance.")}


def _module_file(name: str) -> Path | None:
    """The file below PACKAGE that defines module name, None for a name inside a module."""
    rel = Path(*name.split(".")[1:])
    if rel == Path():
        return Path("__init__.py")
    for candidate in (PACKAGE / rel / "__init__.py", PACKAGE / rel.with_suffix(".py")):
        if candidate.is_file():
            return candidate.relative_to(PACKAGE)
    stub = (PACKAGE / rel).with_suffix(".pyi")  # a compiled extension ships its stub
    return stub.relative_to(PACKAGE) if stub.is_file() else None


def test_the_cards_allow_list_holds_everything_its_modules_import() -> None:
    shipped = set(rootfs.runtime_files(PACKAGE))
    missing = set()
    for rel in sorted(r for r in shipped if r.suffix == ".py"):
        module = ".".join(("appliance", *rel.with_suffix("").parts)).removesuffix(".__init__")
        for name in _appliance_imports(PACKAGE / rel, module):
            found = _module_file(name)
            if found is not None and found not in shipped:
                missing.add(f"{rel} imports {name} ({found} is not in rootfs.RUNTIME)")
    assert sorted(missing) == []


def test_the_card_carries_no_development_kit() -> None:
    shipped = {str(r) for r in rootfs.runtime_files(PACKAGE)}
    assert "cli.py" in shipped and "agent/runtime.py" in shipped
    assert not {s for s in shipped if s.startswith("devkit/")}
    assert (PACKAGE / "devkit" / "commands.py").is_file()  # it exists, and stays home


def test_the_cards_payload_runs_the_cli_and_refuses_dev_commands_in_one_line(
    tmp_path: Path,
) -> None:
    rootfs.install_appliance(PACKAGE, tmp_path, "site")
    # -S: no site hooks (the host's editable install would put the source tree first); the
    # card's package first, then the host's third-party packages
    third_party = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *third_party])}
    env.pop("IS_LOG_LEVEL", None)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        code = "import runpy; runpy.run_module('appliance', run_name='__main__')"
        return subprocess.run(
            [sys.executable, "-S", "-c", code, *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    helped = cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "bench" in helped.stdout and "agent" in helped.stdout
    for argv in (("bench", "wal", "--json"), ("demo",)):
        refused = cli(*argv)
        assert refused.returncode == 1, (argv, refused.stdout, refused.stderr)
        assert refused.stdout == ""
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "no development kit" in refused.stderr, refused.stderr
