"""The runtime zipapp: the host side and the model, self-contained, pure Python, the same bytes from the same tree."""

import io
import subprocess
import sys
import zipfile
from pathlib import Path

from flannelette.deploy import bundle

PACKAGE = Path(__file__).resolve().parents[2] / "runtime" / "flannelette"


def entries(data: bytes) -> list:
    return zipfile.ZipFile(io.BytesIO(data)).infolist()


def test_same_tree_gives_the_same_bytes():
    assert bundle.build_bytes() == bundle.build_bytes()


def test_entries_are_sorted_with_fixed_times_and_modes():
    infos = entries(bundle.build_bytes())
    names = [i.filename for i in infos]
    assert names[0] == "__main__.py"
    assert names[1:] == sorted(names[1:])
    assert {i.date_time for i in infos} == {bundle.FIXED_TIME}
    assert {i.external_attr >> 16 for i in infos} == {0o644}


def test_holds_the_package_its_schemas_and_pure_python_dependencies_only():
    names = {i.filename for i in entries(bundle.build_bytes())}
    for name in ("flannelette/cli.py", "flannelette/model/config.py", "flannelette/schemas/net-conf.yaml",
                 "cerberus/__init__.py", "yaml/__init__.py", "pyroute2/__init__.py"):
        assert name in names
    assert not [n for n in names if n.endswith((".so", ".pyc", ".pyd")) or "__pycache__" in n]


def test_of_the_package_it_holds_the_host_side_and_the_model_only():
    names = {i.filename for i in entries(bundle.build_bytes())}
    ours = {n for n in names if n.startswith("flannelette/") and not n.startswith("flannelette/schemas/")}
    expected = {"flannelette/__init__.py", "flannelette/cli.py"} | {
        f"flannelette/{path.relative_to(PACKAGE).as_posix()}"
        for side in ("host", "model") for path in (PACKAGE / side).rglob("*.py")
    }
    assert ours == expected
    assert not [n for n in names if n.startswith(("flannelette/controller/", "flannelette/deploy/"))]


# Imports every module of the zip's package with pyinfra, paramiko and gevent
# made unimportable, and says which of them anything tried to import.
IMPORT_ALL = """
import sys, zipfile
ABSENT = ("pyinfra", "pyinfra_cli", "paramiko", "gevent")
tried = []
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            tried.append(name)
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Absent())
sys.path.insert(0, sys.argv[1])
names = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in zipfile.ZipFile(sys.argv[1]).namelist()
         if n.startswith("flannelette/") and n.endswith(".py")]
for name in names:
    __import__(name)
print(len(names), "imported; tried:", tried)
"""


def test_every_module_of_it_imports_with_pyinfra_and_paramiko_absent(tmp_path):
    target = bundle.build(tmp_path / "flannelette.pyz")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", IMPORT_ALL, str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("imported; tried: []"), result.stdout


def test_on_a_host_the_operator_commands_say_where_they_run(tmp_path):
    target = bundle.build(tmp_path / "flannelette.pyz")
    result = subprocess.run([sys.executable, "-I", "-S", str(target), "validate", "inventory/prod.py"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "an operator's command" in result.stderr


def test_a_changed_source_changes_the_bytes(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("a = 1\n")
    before = bundle.build_bytes({"flannelette/x.py": source})
    source.write_text("a = 2\n")
    assert bundle.build_bytes({"flannelette/x.py": source}) != before


def test_build_writes_only_when_the_bytes_differ(tmp_path):
    target = bundle.build(tmp_path / "flannelette.pyz")
    first = target.stat().st_mtime_ns
    assert bundle.build(target).stat().st_mtime_ns == first
    assert target.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_runs_from_the_zip_with_no_site_packages(tmp_path):
    target = bundle.build(tmp_path / "flannelette.pyz")
    # -I -S: no site-packages, no environment; everything must come from the zip.
    for argv in (["--help"], ["run", "--help"]):
        result = subprocess.run([sys.executable, "-I", "-S", str(target), *argv], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert "usage: flannelette run" in result.stdout
    check = "import cerberus, yaml, pyroute2, flannelette.schemas as s; print(sorted(s.load('net-conf'))[0])"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {check}"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
