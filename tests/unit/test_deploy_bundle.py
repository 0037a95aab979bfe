"""The runtime zipapp: self-contained, pure Python, and the same bytes from the same tree."""

import io
import subprocess
import sys
import zipfile

from flannelette.deploy import bundle


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
