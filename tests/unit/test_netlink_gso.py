"""gso_max_size of flannel0: lowered where the kernel allows it, and a refusal said, not raised."""

from pyroute2.netlink.exceptions import NetlinkError as KernelRefusal

from flannelette.host.kernel import netlink


class Link:
    def __init__(self, size):
        self.size = size

    def get_attr(self, name):
        assert name == "IFLA_GSO_MAX_SIZE"
        return self.size


class FakeIPRoute:
    """Links by index, each with a gso_max_size; `honours` says whether a set takes effect."""

    def __init__(self, size, honours=True, refuses=False):
        self.size, self.honours, self.refuses, self.calls = size, honours, refuses, []

    def get_links(self, index):
        return [Link(self.size)]

    def link(self, command, index, gso_max_size):
        self.calls.append((command, index, gso_max_size))
        if self.refuses:
            raise KernelRefusal(95, "Operation not supported")
        if self.honours:
            self.size = gso_max_size


def test_lowered_once_and_left_alone_after():
    ipr = FakeIPRoute(65536)
    assert netlink.limit_gso(ipr, 7, 65000)
    assert netlink.limit_gso(ipr, 7, 65000)
    assert ipr.calls == [("set", 7, 65000)]


def test_a_kernel_that_refuses_or_ignores_it_is_reported():
    assert not netlink.limit_gso(FakeIPRoute(65536, refuses=True), 7, 65000)
    assert not netlink.limit_gso(FakeIPRoute(65536, honours=False), 7, 65000)
