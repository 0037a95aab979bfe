"""Benchmarks: flannelette against kernel VXLAN and the bare underlay."""
