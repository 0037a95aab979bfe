"""The benchmarks run from a clean checkout and print their tables: bench/ is how performance is measured."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench(*argv):
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_bench_measures_both_formats_against_vxlan_on_a_wire_and_on_veth():
    cpu, header, *rows = bench("bench", "--seconds", "1", "--paths", "vxlan,fast,flannel", "--loss", "0.01",
                               "--underlays", "wire,wire-loss,veth")
    assert cpu.startswith("# ") and "CPU" in cpu  # ratios differ between machines: the table says which
    assert header.split()[:4] == ["path", "TCP", "Gbit/s", "/"]
    assert [" ".join(row.split()[:2]) for row in rows] == [
        "vxlan wire", "fast wire", "flannel wire", "vxlan wire-loss", "fast wire-loss", "flannel wire-loss",
        "vxlan veth", "fast veth", "flannel veth"]
    for row in rows:
        gbits = row.split()[3 if "loss" in row else 2]
        assert float(gbits) > 0.1, row  # each path carried TCP at all


def test_multiqueue_bench_spreads_over_two_queues():
    header, *rows = bench("bench.multiqueue", "--queues", "1,2", "--streams", "2", "--seconds", "1")
    assert [row.split(",")[0] for row in rows] == ["vxlan", "fast", "fast"]
    assert "2 queues" in rows[2] and float(rows[2].split()[5]) > 0.1, rows[2]
