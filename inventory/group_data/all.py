# Data for every host of every inventory in this folder.
#
# flannel_net_conf: flannel's net-conf.json, as a dict here or as the path of a
# net-conf.json file (relative to the directory pyinfra runs in). Defaults
# follow flannel: SubnetLen 24, SubnetMin the second subnet, SubnetMax the
# last one, Backend port 8285.
flannel_net_conf = {
    "Network": "10.244.0.0/16",
    "Backend": {"Type": "udp", "Port": 8285},
}
