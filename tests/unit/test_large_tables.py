"""Large lease tables: the generated 10,000- and 60,000-lease tables load, and the fast paths agree with the slow ones."""

import hashlib
import json
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from bench import leasegen
from flannelette import schemas
from flannelette.host import metrics
from flannelette.host.datapath.leases import LeaseTable
from flannelette.model import config
from flannelette.model.problems import ConfigError, plainly_valid


@pytest.fixture(scope="module")
def big_conf():
    return config.parse_net_conf(leasegen.net_conf())


@pytest.mark.parametrize("count,keys", [(10_000, True), (60_000, False)])
def test_a_generated_table_loads_and_every_peer_is_found(tmp_path, big_conf, count, keys):
    _, path = leasegen.write_table(str(tmp_path), count, keys=keys)
    leases = config.load_leases(path, big_conf)
    assert len(leases) == count
    assert all((lease.public_key is not None) == keys for lease in leases)
    table = LeaseTable(leases[0], leases, big_conf.subnet_len, big_conf.port)
    assert len(table.by_subnet) == len(table.by_address) == count - 1
    for lease in random.Random(1).sample(leases[1:], 200):
        inside = int(lease.subnet.network_address) + 7
        assert table.peer_for(inside).host == lease.host
        assert table.peer_at(str(lease.public_ip)).subnet == lease.subnet
    assert table.peer_for(int(leases[0].subnet.network_address)) is None  # this host is no peer of its own


def test_a_generated_table_with_one_conflict_is_refused_naming_both(tmp_path, big_conf):
    leases = leasegen.generate(10_000)
    leases[9_000]["subnet"] = leases[10]["subnet"]
    with pytest.raises(ConfigError) as e:
        config.parse_leases({"leases": leases}, big_conf)
    assert [str(p) for p in e.value.problems] == [
        f"leases.json: subnet: {leases[10]['subnet']} is held by both gen11 and gen9001"]


def test_a_table_of_60000_cuts_a_slash_8_into_slash_24s():
    leases = leasegen.generate(60_000)
    assert {IPv4Network(lease["subnet"]).prefixlen for lease in leases} == {24}
    assert all(IPv4Network(lease["subnet"]).subnet_of(leasegen.NETWORK) for lease in leases)
    assert len({lease["public_ip"] for lease in leases}) == 60_000


def test_the_render_is_json_dumps_indented(big_conf):
    leases = config.parse_leases({"leases": leasegen.generate(50, keys=True)}, big_conf)
    odd = config.Lease('n\u00e9"1\\', leases[0].subnet, leases[0].public_ip, config.WIRE_FLANNEL)
    for table in ([], leases[:1], leases + [odd]):
        assert config.render_leases(table) == json.dumps({"leases": [lease.to_json() for lease in table]}, indent=2) + "\n"
    assert metrics.lease_hash(leases) == metrics.lease_hash(list(reversed(leases)))
    for table in ([], leases[:1], leases + [odd]):  # the hash is of the text render_leases writes, sorted
        text = config.render_leases(sorted(table, key=lambda lease: (lease.host, lease.subnet)))
        assert metrics.lease_hash(table) == hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the fast paths agree with the definitions ----------------------------------------

VALUES = ["", "node1", "10.244.1.0/24", "192.168.1.1", "flannel", "flannelette", "auto", "on", "required", 0, 1, 8285,
          True, False, None, [], ["x"], {}, {"Type": "udp"}, 1.5]


def random_document(rng, schema, depth=0):
    names = list(schema) + ["extra", "Lease", "hosts"]
    document = {}
    for name in rng.sample(names, rng.randint(0, len(names))):
        rules = schema.get(name, {})
        sub = rules.get("schema")
        if sub is not None and depth < 2 and rng.random() < 0.7:
            if rules.get("type") == "list":
                value = [random_document(rng, sub["schema"], depth + 1) if "schema" in sub and rng.random() < 0.9
                         else rng.choice(VALUES) for _ in range(rng.randint(0, 3))]
            else:
                value = random_document(rng, sub, depth + 1)
        else:
            value = rng.choice(VALUES)
        document[name] = value
    return document


def plain_lease(rng):
    lease = {"host": rng.choice(["a", "b", ""]), "subnet": "10.244.1.0/24", "public_ip": "1.2.3.4"}
    for name, value in (("wire", rng.choice(["flannel", "flannelette", "auto", 3])), ("public_key", rng.choice(["k", 5]))):
        if rng.random() < 0.4:
            lease[name] = value
    if rng.random() < 0.1:
        del lease[rng.choice(list(lease))]
    return lease


@pytest.mark.parametrize("name", ["leases", "net-conf", "host"])
def test_plainly_valid_never_passes_what_cerberus_refuses(name):
    """Property: plainly_valid says True only where cerberus finds nothing (and says it for the common shapes)."""
    schema, rng, agreed = schemas.load(name), random.Random(name), 0
    for _ in range(3000):
        if name == "leases" and rng.random() < 0.5:
            document = {"leases": [plain_lease(rng) for _ in range(rng.randint(0, 4))]}
        else:
            document = random_document(rng, schema)
        valid = schemas.validator(schema).validate(document)
        if plainly_valid(document, schema):
            assert valid, document
        agreed += valid and plainly_valid(document, schema)
    assert agreed > 5


def test_canonical_addresses_read_as_ipaddress_reads_them():
    rng = random.Random(5)
    texts = ["0.0.0.0", "255.255.255.255", "10.0.0.0/8", "10.0.1.0/24", "10.0.1.5/24", "010.0.0.1", "1.2.3",
             "1.2.3.4/33", "1.2.3.4/", "256.1.1.1", "1.2.3.4/024", " 1.2.3.4", "1.2.3.0/255.255.255.0", "1.2.3.4\n"]
    for _ in range(2000):
        address = IPv4Address(rng.getrandbits(32))
        texts += [str(address), f"{address}/{rng.randint(0, 32)}", str(IPv4Network((address, rng.randint(0, 32)), strict=False))]
    for text in texts:
        failures, expected = [], None
        try:
            expected = IPv4Network(text) if "/" in text else IPv4Address(text)
        except ValueError:
            pass
        got = (config.parse_cidr if "/" in text else config.parse_address)(text, failures.append)
        assert got == expected and (got is None) == bool(failures), text


def test_hellos_to_a_large_new_table_come_in_batches_and_all_go_out(big_conf):
    from flannelette.host.datapath import exchange
    from flannelette.host.datapath.exchange import Exchanges

    leases = config.parse_leases({"leases": leasegen.generate(1_000)}, big_conf)
    table = LeaseTable(leases[0], leases, big_conf.subnet_len, big_conf.port)
    exchanges = Exchanges(1, "0.2.0", rng=random.Random(1))
    exchanges.adopt(table, 0.0)
    batches = []
    while exchanges.next_due() is not None and exchanges.next_due() <= 0.0:
        batches.append(len(exchanges.due(0.0)))
    assert batches[0] == exchange.BATCH and max(batches) == exchange.BATCH
    assert sum(batches) == 999  # every peer asked once now, the rest of each round a second later


# -- a reload keeps what didn't change ------------------------------------------------


def test_a_reload_keeps_the_unchanged_leases_and_finds_every_problem_as_a_fresh_read(big_conf):
    table = leasegen.generate(1000, keys=True)
    before = config.parse_leases({"leases": table}, big_conf)
    changed = [dict(lease) for lease in table]
    changed[5]["public_ip"] = "100.127.0.5"
    changed[6]["wire"] = "flannel"
    changed[7]["subnet"] = "10.200.7.0/24"  # another subnet for the same host: a new lease
    del changed[8]
    after = config.parse_leases({"leases": changed}, big_conf, previous=before)
    assert after == config.parse_leases({"leases": changed}, big_conf)
    kept = {id(lease) for lease in before}
    assert [id(lease) in kept for lease in after[4:9]] == [True, False, False, False, True]
    changed[9]["subnet"] = changed[10]["subnet"]  # a conflict among kept leases is still found
    changed[11]["public_key"] = "not a key"
    with pytest.raises(ConfigError) as fresh:
        config.parse_leases({"leases": changed}, big_conf)
    with pytest.raises(ConfigError) as reloaded:
        config.parse_leases({"leases": changed}, big_conf, previous=before)
    assert [str(p) for p in reloaded.value.problems] == [str(p) for p in fresh.value.problems]


def test_a_table_made_from_another_keeps_its_peers_and_names_the_difference(big_conf):
    leases = config.parse_leases({"leases": leasegen.generate(500)}, big_conf)
    old = LeaseTable(leases[0], leases, big_conf.subnet_len, big_conf.port)
    fresh = config.parse_leases({"leases": [lease.to_json() for lease in leases[:-3]] +
                                 leasegen.generate(2, first=600)}, big_conf)  # new objects, as from a restart
    for incoming in (leases[:-3] + fresh[-2:], fresh):
        new = LeaseTable(leases[0], incoming, big_conf.subnet_len, big_conf.port, previous=old)
        assert all(new.by_subnet[key] is peer for key, peer in old.by_subnet.items() if key in new.by_subnet)
        by_identity = old.peers_by_identity(), new.peers_by_identity()
        assert {p.identity for p in new.peers_not_in(old)} == by_identity[1].keys() - by_identity[0].keys()
        assert {p.identity for p in old.peers_not_in(new)} == by_identity[0].keys() - by_identity[1].keys()
        assert len(new.peers_not_in(old)) == 2 and len(old.peers_not_in(new)) == 3


@pytest.mark.parametrize("name", ["leases", "net-conf", "host"])
def test_the_schemas_read_by_libyaml_as_by_pyyaml(name):
    import yaml

    assert schemas.load(name) == yaml.safe_load(schemas.text(name))
