"""Where a deployed host keeps the overlay's files: the deploy writes them here, the host's commands read them."""

PYZ = "/usr/local/lib/flannelette/flannelette.pyz"  # the runtime
COMMAND = "/usr/local/bin/flannelette"  # linked to it
CONF_DIR = "/etc/flannelette"
NET_CONF = f"{CONF_DIR}/net-conf.json"
LEASES = f"{CONF_DIR}/leases.json"
PRIVATE_KEY = f"{CONF_DIR}/private.key"  # made on the host, never read by the deploy
PSK = f"{CONF_DIR}/psk"
UNIT_NAME = "flannelette.service"
