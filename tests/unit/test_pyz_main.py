"""The zipapp's entry: unpacked once per version into the cache directory, imported from there."""

import os
import subprocess
import sys

from flannelette.deploy import bundle, pyz_main


def test_first_start_of_a_version_unpacks_it_and_later_starts_reuse_it(tmp_path):
    archive = bundle.build(tmp_path / "flannelette.pyz")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = pyz_main.unpacked(str(archive), str(cache))
    assert os.path.isfile(os.path.join(first, "flannelette", "cli.py"))
    assert not os.path.exists(os.path.join(first, pyz_main.ENTRY))
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    assert pyz_main.unpacked(str(archive), str(cache)) == first and os.path.exists(marker)  # not unpacked again
    assert sorted(os.listdir(cache)) == [os.path.basename(first)]


def test_another_version_replaces_the_copy_of_the_last(tmp_path):
    source = tmp_path / "x.py"
    cache = tmp_path / "cache"
    cache.mkdir()
    copies = []
    for text in ("a = 1\n", "a = 2\n"):
        source.write_text(text)
        archive = bundle.build(tmp_path / "flannelette.pyz", bundle.build_bytes({"flannelette/x.py": source}))
        copies.append(pyz_main.unpacked(str(archive), str(cache)))
    assert copies[0] != copies[1]
    assert os.listdir(cache) == [os.path.basename(copies[1])]


def test_without_a_cache_directory_or_one_it_cant_write_it_imports_from_the_zip(tmp_path):
    archive = str(tmp_path / "flannelette.pyz")
    assert pyz_main.import_path(archive, {}) == archive
    assert pyz_main.import_path(archive, {"CACHE_DIRECTORY": str(tmp_path / "missing")}) == archive


def test_the_zipapp_runs_from_its_unpacked_copy_with_bytecode_kept(tmp_path):
    archive = bundle.build(tmp_path / "flannelette.pyz")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, CACHE_DIRECTORY=str(cache))
    for _ in range(2):
        result = subprocess.run([sys.executable, "-I", "-S", str(archive), "run", "--help"], capture_output=True,
                                text=True, env=env)
        assert result.returncode == 0, result.stderr
    (copy,) = os.listdir(cache)
    assert any(name.startswith("daemon.") for name in os.listdir(cache / copy / "flannelette" / "host" / "__pycache__"))
