"""flannel's masquerade and forward rules, rendered as text and applied atomically.

The rules live in chains of their own (iptables) or a table of their own
(nftables). Rendering is pure; `run` is the one place a rule tool is executed.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network
from typing import List, Optional, Sequence

POSTRTG = "FLANNEL-POSTRTG"
FWD = "FLANNEL-FWD"
NFT_TABLE = "flannelette"
MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'
# kube-proxy marks packets it will masquerade itself; flannel skips them so
# they are not masqueraded twice.
KUBE_PROXY_MARK = "0x4000/0x4000"
MULTICAST = "224.0.0.0/4"


class RulesError(Exception):
    pass


def masquerade_rules(network: IPv4Network, subnet: IPv4Network) -> List[str]:
    """flannel's FLANNEL-POSTRTG: masquerade leaving the overlay, never inside it."""
    n, s, c = network, subnet, MASQ_COMMENT
    return [
        f"-A {POSTRTG} -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN",
        f"-A {POSTRTG} -s {s} -d {n} {c} -j RETURN",
        f"-A {POSTRTG} -s {n} -d {s} {c} -j RETURN",
        f"-A {POSTRTG} ! -s {n} -d {s} {c} -j RETURN",
        f"-A {POSTRTG} -s {n} ! -d {MULTICAST} {c} -j MASQUERADE --random-fully",
        f"-A {POSTRTG} ! -s {n} -d {n} {c} -j MASQUERADE --random-fully",
    ]


def forward_rules(network: IPv4Network) -> List[str]:
    """flannel's FLANNEL-FWD: forward anything to or from the overlay."""
    return [f"-A {FWD} -s {network} {FWD_COMMENT} -j ACCEPT", f"-A {FWD} -d {network} {FWD_COMMENT} -j ACCEPT"]


def jump(table: str) -> str:
    if table == "nat":
        return f"POSTROUTING {MASQ_COMMENT} -j {POSTRTG}"
    return f"FORWARD {FWD_COMMENT} -j {FWD}"


def render_iptables(
    network: IPv4Network, subnet: IPv4Network, masquerade: bool, jumps_present: Sequence[str], chains_present=()
) -> str:
    """iptables-restore --noflush input that installs our chains, replacing their contents.

    Declaring a chain in --noflush mode creates it or empties it, so the chain
    contents are exact on every run; the jump into it is inserted first in the
    built-in chain only when it is not there already (`jumps_present`).
    """
    sections = []
    if masquerade:
        sections.append(_iptables_table("nat", POSTRTG, masquerade_rules(network, subnet), jumps_present))
    else:  # masquerading was switched off since the last start
        nat = [t for t in jumps_present if t == "nat"]
        sections.append(render_iptables_removal(nat, [c for c in chains_present if c == POSTRTG]))
    sections.append(_iptables_table("filter", FWD, forward_rules(network), jumps_present))
    return "".join(sections)


def _iptables_table(table: str, chain: str, rules: List[str], jumps_present: Sequence[str]) -> str:
    lines = [f"*{table}", f":{chain} - [0:0]"]
    if table not in jumps_present:
        lines.append(f"-I {jump(table)}")
    return "\n".join(lines + rules + ["COMMIT", ""])


def render_iptables_removal(jumps_present: Sequence[str], chains_present: Sequence[str]) -> str:
    """iptables-restore --noflush input that removes our jumps and chains."""
    sections = []
    for table, chain in (("nat", POSTRTG), ("filter", FWD)):
        lines = [f"*{table}"]
        if table in jumps_present:
            lines.append(f"-D {jump(table)}")
        if chain in chains_present:
            lines += [f"-F {chain}", f"-X {chain}"]
        if len(lines) > 1:
            sections.append("\n".join(lines + ["COMMIT", ""]))
    return "".join(sections)


def parse_iptables_save(text: str):
    """The tables whose jump into our chain exists, and which of our chains exist."""
    jumps, chains, table = [], [], None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":") and line[1:].split(" ")[0] in (POSTRTG, FWD):
            chains.append(line[1:].split(" ")[0])
        elif table and line.startswith("-A ") and line.endswith(f"-j {POSTRTG if table == 'nat' else FWD}"):
            if line.split(" ")[1] in ("POSTROUTING", "FORWARD"):
                jumps.append(table)
    return jumps, chains


def render_nft(network: IPv4Network, subnet: IPv4Network, masquerade: bool) -> str:
    """nft -f input that replaces our table in one transaction.

    Declaring then deleting the table first makes the script work whether or
    not the table exists, and the whole file applies atomically.
    """
    n, s = network, subnet
    lines = [f"table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}", f"table ip {NFT_TABLE} {{"]
    lines += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    ip saddr {n} accept",
        f"    ip daddr {n} accept",
        "  }",
    ]
    if masquerade:
        lines += [
            "  chain postrtg {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            "    meta mark & 0x4000 == 0x4000 return",
            f"    ip saddr {s} ip daddr {n} return",
            f"    ip saddr {n} ip daddr {s} return",
            f"    ip saddr != {n} ip daddr {s} return",
            f"    ip saddr {n} ip daddr != {MULTICAST} masquerade fully-random",
            f"    ip saddr != {n} ip daddr {n} masquerade fully-random",
            "  }",
        ]
    return "\n".join(lines + ["}", ""])


def render_nft_removal() -> str:
    return f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"


def run(argv: List[str], text: Optional[str] = None) -> str:
    """Run a rule tool with `text` on stdin; its stdout, or RulesError with its stderr."""
    try:
        done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RulesError(f"{argv[0]} is not installed; install the {argv[0].split('-')[0]} package") from None
    if done.returncode != 0:
        raise RulesError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Rules:
    """The rule set of one host, applied with iptables or nftables."""

    def __init__(self, network: IPv4Network, subnet: IPv4Network, masquerade: bool, nftables: bool, runner=run):
        self.network, self.subnet, self.masquerade = network, subnet, masquerade
        self.nftables, self.run = nftables, runner

    def apply(self) -> bool:
        """Put the rules in place; whether any of ours were there before (a runtime ran here before)."""
        if self.nftables:
            before = self.present()
            self.run(["nft", "-f", "-"], render_nft(self.network, self.subnet, self.masquerade))
            return before
        jumps, chains = parse_iptables_save(self.run(["iptables-save"]))
        self.run(["iptables-restore", "--noflush"], render_iptables(self.network, self.subnet, self.masquerade, jumps, chains))
        return bool(jumps or chains)

    def present(self) -> bool:
        """Whether any of our rules are in place (a runtime ran here before)."""
        if self.nftables:
            return f"table ip {NFT_TABLE}" in self.run(["nft", "list", "tables"]).splitlines()
        jumps, chains = parse_iptables_save(self.run(["iptables-save"]))
        return bool(jumps or chains)

    def remove(self) -> None:
        if self.nftables:
            self.run(["nft", "-f", "-"], render_nft_removal())
            return
        jumps, chains = parse_iptables_save(self.run(["iptables-save"]))
        text = render_iptables_removal(jumps, chains)
        if text:
            self.run(["iptables-restore", "--noflush"], text)
