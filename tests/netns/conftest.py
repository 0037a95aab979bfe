"""Fixtures of the netns tier; the machinery lives in netns_hosts."""

from netns_hosts import cluster, pytest_collection_modifyitems, three  # noqa: F401  (pytest finds them here)
