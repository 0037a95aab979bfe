"""Thin wrappers around the kernel, one per kind of side effect: netlink, the TUN device, the UDP socket."""
