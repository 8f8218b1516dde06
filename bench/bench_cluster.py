"""
Two gateway nodes on one Redis against one: what crossing nodes costs.

The load of ``run.py``'s TCP cases (``load.py``: pairs of connections, each
sending to its partner, ``--window`` messages in flight each), through:

    one node       one gateway node (in a cluster of one, so that it pays for the registry too)
    cross-node     two nodes, every pair split between them: every message crosses over Redis
    same-node      two nodes, every pair on one node: nothing crosses

each run on fresh nodes, ``--repeat`` times in turns. Prints the rates and
the ratios cross-node / same-node and two nodes / one.

    python bench/bench_cluster.py [--seconds 5] [--connections 100] [--repeat 2]
"""

import argparse
import json
import os
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
from run import Child, _median  # noqa: E402

from gateway.cluster.redis import command  # noqa: E402

REDIS = os.environ.get("GATEWAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")


class Bench:
    def __init__(self, args):
        self.args = args
        self.log_dir = tempfile.mkdtemp(prefix="bench-cluster-")
        self.count = 0

    def name(self, what):
        self.count += 1
        return f"{self.count:02d}-{what}"

    def node(self, node, prefix):
        argv = [os.path.join(HERE, "relay.py"), "--mode", "gateway", "--port", "0", "--users",
                str(self.args.connections), "--redis", REDIS, "--node", node, "--prefix", prefix]
        child = Child(self.name(node), argv, self.log_dir)
        child.port = child.read(timeout=120)["port"]
        return child

    def load(self, ports, placement):
        a = self.args
        argv = [os.path.join(HERE, "load.py"), "--ports", ",".join(map(str, ports)), "--placement", placement,
                "--connections", str(a.connections), "--window", str(a.window), "--seconds", str(a.seconds)]
        child = Child(self.name("load"), argv, self.log_dir)
        try:
            return child.read(timeout=300)
        finally:
            child.finish(30)

    def run(self, case):
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        nodes = [self.node("a", prefix)] + ([self.node("b", prefix)] if case != "one node" else [])
        try:
            time.sleep(0.5)  # the registries' first beats
            result = self.load([n.port for n in nodes], "same" if case == "same-node" else "cross")
            stats = [n.ask("stats") for n in nodes]
        finally:
            for n in nodes:
                n.finish(60)
            clean(prefix)
        delivered = sum(s["outcomes"].get("delivered", 0) for s in stats)
        if result["received"] != result["sent"] or delivered != result["sent"]:
            print(f"WARNING {case}: sent {result['sent']}, received {result['received']}, "
                  f"delivered outcomes {delivered}")
        return result

    def main(self):
        print(json.dumps(common.machine_info()))
        cases = ("one node", "cross-node", "same-node")
        runs = {case: [] for case in cases}
        for _ in range(self.args.repeat):
            for case in cases:
                runs[case].append(self.run(case)["rate"])
        rates = {case: _median(r) for case, r in runs.items()}
        for case in cases:
            print(f"{case:>11}: {rates[case]:>9,.0f} msg/s  (runs {', '.join(f'{r:,.0f}' for r in runs[case])}; "
                  f"{self.args.connections} connections, {self.args.window} in flight each, {self.args.seconds:g} s)")
        print(f"cross-node / same-node: {rates['cross-node'] / rates['same-node']:.2f} (goal >= 0.5); "
              f"two nodes (same-node) / one node: {rates['same-node'] / rates['one node']:.2f}")
        print(f"logs in {self.log_dir}")


def clean(prefix):
    [keys] = command(REDIS, ("KEYS", f"{prefix}:*"))
    if keys:
        command(REDIS, ("DEL", *keys))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    Bench(parser.parse_args()).main()
