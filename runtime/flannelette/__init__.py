"""flannelette: flannel's udp backend for plain Linux hosts, provisioned by pyinfra."""

__version__ = "0.1.0"
