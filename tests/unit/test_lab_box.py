"""The Vagrant box's pure parts: metadata.json, the box's Vagrantfile, the tar
that becomes the .box file, and where the Vagrant cluster looks for what it left."""

import json
import os
import tarfile

import pytest

from lab import box, qemu
from lab import vagrant as vagrantmod
from lab.errors import LabError


def test_the_metadata_names_the_libvirt_provider_and_rounds_the_disk_up_to_whole_gib():
    assert box.metadata(1540358144) == {"provider": "libvirt", "format": "qcow2", "virtual_size": 2}
    assert box.metadata(1 << 30)["virtual_size"] == 1


def test_the_box_vagrantfile_boots_the_kernel_beside_it_with_the_lab_vms_arguments():
    text = box.vagrantfile()
    assert 'lv.kernel = File.join(__dir__, "vmlinuz")' in text
    assert 'lv.initrd = File.join(__dir__, "initrd.img")' in text
    assert f'lv.cmd_line = "{" ".join(qemu.BOOT_ARGS)}"' in text
    assert "root=/dev/vda" in text


def test_the_box_file_holds_its_contents_metadata_first(tmp_path):
    directory = tmp_path / "box"
    directory.mkdir()
    for name in box.CONTENTS:
        (directory / name).write_text(name)
    written = box.write(directory, tmp_path / "test.box")
    with tarfile.open(written) as tar:
        assert tar.getnames() == list(box.CONTENTS)
        assert tar.extractfile("metadata.json").read() == b"metadata.json"
    assert sorted(os.listdir(tmp_path)) == ["box", "test.box"]


def test_a_box_missing_a_part_leaves_no_file(tmp_path):
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "metadata.json").write_text(json.dumps(box.metadata(1 << 30)))
    with pytest.raises(FileNotFoundError):
        box.write(tmp_path / "box", tmp_path / "test.box")
    assert sorted(os.listdir(tmp_path)) == ["box"]


def test_without_vagrant_there_is_no_insecure_key_and_the_error_says_what_to_install(tmp_path):
    with pytest.raises(LabError, match="apt-get install vagrant"):
        box.insecure_key(str(tmp_path / "gems/vagrant-*/keys/vagrant.pub"))
    key = tmp_path / "gems/vagrant-2.3.4/keys/vagrant.pub"
    key.parent.mkdir(parents=True)
    key.write_text("ssh-rsa AAAA vagrant insecure public key\n")
    assert box.insecure_key(str(tmp_path / "gems/vagrant-*/keys/vagrant.pub")).startswith("ssh-rsa")


def test_the_cluster_settings_keep_its_vms_networks_and_disks_under_its_own_names():
    cluster = vagrantmod.VagrantCluster(name="vt", nodes=2)
    text = vagrantmod.HOME_VAGRANTFILE.format(prefix=cluster.prefix, pool=cluster.pool,
                                              management=vagrantmod.MANAGEMENT_NETWORK)
    assert 'lv.default_prefix = "flannelette-vt-"' in text
    assert 'lv.storage_pool_name = "flannelette-vt"' in text
    assert 'lv.management_network_mode = "none"' in text
    assert cluster.hosts() == [("node1", "192.168.56.11"), ("node2", "192.168.56.12")]
    env = cluster.env()
    assert env["NODES"] == "2" and env["FLANNELETTE_BOX"] == "flannelette-vt/bookworm"
    assert cluster.command_prefix() == ["ip", "netns", "exec", "vt-net"]


def test_libvirt_definitions_are_found_at_any_depth(tmp_path):
    (tmp_path / "qemu/networks").mkdir(parents=True)
    (tmp_path / "qemu/a.xml").write_text("")
    (tmp_path / "qemu/networks/b.xml").write_text("")
    (tmp_path / "qemu/networks/autostart").mkdir()
    assert vagrantmod.config_files(tmp_path) == [str(tmp_path / "qemu/a.xml"),
                                                 str(tmp_path / "qemu/networks/b.xml")]
