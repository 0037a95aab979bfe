"""The data path: packets between flannel0 and the UDP socket, the lease table, and the wire formats."""
