"""Fixtures of the netns tier; the machinery lives in netns_hosts."""

from netns_hosts import (  # noqa: F401  (pytest finds them here)
    cluster, pytest_collection_modifyitems, pytest_generate_tests, three, underlay,
)
