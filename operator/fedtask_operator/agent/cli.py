"""`fedtask node-agent`: serve one Node of a real Kubernetes API server with pods run as local processes.

    fedtask node-agent --kubeconfig NODE.kubeconfig --nodes NODES.yaml --node NAME --root DIR \\
        [--image-dockerfile REPOSITORY=Dockerfile]... [--image-entrypoint REPOSITORY=COMMAND]... \\
        [--isolate] [--hosts-file FILE] [--no-fork-server]

The kubeconfig holds the node's own credentials (a client certificate for `system:node:NAME` in `system:nodes`):
the Node authorizer and NodeRestriction admission then allow it exactly what they allow a kubelet. Pods get
`KUBERNETES_SERVICE_HOST/PORT` of the API server the kubeconfig names (or --api-server).

--isolate (as root) runs the agent as the first process of its own PID and mount namespaces (`unshare`): every pod
process lives and dies with the agent (killing the agent leaves nothing behind), and --hosts-file is bind-mounted
onto /etc/hosts for the agent and all its pods (Service names, see `agent.hosts`).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

ISOLATED_ENV = "FEDTASK_NODE_AGENT_ISOLATED"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtask node-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="the node's kubeconfig (system:node:NAME credentials)")
    parser.add_argument("--nodes", required=True, metavar="FILE",
                        help="a `kubectl get nodes -o yaml` List (or one Node): labels, taints, capacity")
    parser.add_argument("--node", metavar="NAME", help="which node of FILE to serve (default: the only one)")
    parser.add_argument("--root", required=True, help="folder for the pods' files (logs, volumes, exit codes)")
    parser.add_argument("--image-entrypoint", action="append", default=[], metavar="REPOSITORY=COMMAND",
                        help="what an image runs when the pod gives no command (repeatable)")
    parser.add_argument("--image-dockerfile", action="append", default=[], metavar="REPOSITORY=PATH",
                        help="take an image's ENTRYPOINT/CMD from this Dockerfile's last stage (repeatable)")
    parser.add_argument("--api-server", default="",
                        help="the API server URL pods get as KUBERNETES_SERVICE_HOST/PORT (default: the kubeconfig's)")
    parser.add_argument("--node-ip", default="",
                        help="the node's InternalIP, also every pod's IP and the address Service names resolve to "
                             "(default: this machine's first non-loopback IPv4 address, else 127.0.0.1)")
    parser.add_argument("--isolate", action="store_true",
                        help="own PID and mount namespaces (root): pods die with the agent; needed for --hosts-file")
    parser.add_argument("--hosts-file", default="", help="keep this file listing the cluster's Services and bind it "
                                                         "onto /etc/hosts (with --isolate)")
    parser.add_argument("--no-fork-server", action="store_true",
                        help="start worker pods as plain processes (default: fork them from a preloaded server)")
    parser.add_argument("--lease-seconds", type=int, default=40, help="the node Lease's duration")
    parser.add_argument("--renew-seconds", type=float, default=10.0, help="how often the Lease is renewed")
    parser.add_argument("--status-seconds", type=float, default=60.0, help="how often NodeReady is posted")
    parser.add_argument("--crash-backoff-seconds", type=float, default=10.0,
                        help="first restart delay of a container that ended (doubles up to 300 s)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def reexec_isolated(argv: list[str]) -> int:
    """Run this command again as PID 1 of new PID and mount namespaces; --kill-child: the namespace dies with us."""
    unshare = shutil.which("unshare")
    if unshare is None:
        print("fedtask node-agent: --isolate needs `unshare` (util-linux)", file=sys.stderr)
        return 2
    env = {**os.environ, ISOLATED_ENV: "1"}
    command = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--propagation", "private",
               "--", sys.executable, "-m", "fedtask_operator.agent.cli", *argv]
    os.execve(unshare, command, env)
    return 1  # not reached


def machine_ip() -> str:
    """The address this machine sends from (no packet is sent), or 127.0.0.1 without a route. The API server
    refuses loopback addresses in Endpoints, so pods and nodes get a real interface's address when there is one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return "127.0.0.1" if address.startswith("127.") else address


def pod_environment(api_server: str) -> dict:
    """What every pod starts from: the node's PATH with the venv first (the images' /opt/fedtask/bin), and the
    API server's address as a kubelet gives it to every container."""
    url = urlparse(api_server)
    host, port = url.hostname or "127.0.0.1", str(url.port or 443)
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:{SYSTEM_PATH}",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if args.isolate and os.environ.get(ISOLATED_ENV) != "1":
        if os.geteuid() != 0:
            print("fedtask node-agent: --isolate needs root (namespaces, bind mounts)", file=sys.stderr)
            return 2
        return reexec_isolated(argv)
    if args.hosts_file and os.environ.get(ISOLATED_ENV) != "1":
        print("fedtask node-agent: --hosts-file needs --isolate (it is bind-mounted onto /etc/hosts)",
              file=sys.stderr)
        return 2

    from fedtask_operator import __version__
    from fedtask_operator.agent.agent import NodeAgent
    from fedtask_operator.agent.hosts import HostsFile
    from fedtask_operator.agent.images import ImageMap, ImageMapError
    from fedtask_operator.agent.node_api import NodeApi
    from fedtask_operator.agent.podspec import PodPreparer
    from fedtask_operator.core.documents import DocumentError
    from fedtask_operator.local.forkserver import ForkServer
    from fedtask_operator.local.nodes import load_nodes

    try:
        nodes = load_nodes(args.nodes)
        images = ImageMap()
        for spec in args.image_dockerfile:
            images.add_dockerfile(spec)
        for spec in args.image_entrypoint:
            images.add_entrypoint(spec)
    except (DocumentError, ImageMapError) as err:
        print(f"fedtask node-agent: {err}", file=sys.stderr)
        return 2
    if args.node is None and len(nodes) != 1:
        print(f"fedtask node-agent: {args.nodes} has {len(nodes)} nodes: choose one with --node", file=sys.stderr)
        return 2
    template = next((n for n in nodes if args.node in (None, n["metadata"]["name"])), None)
    if template is None:
        print(f"fedtask node-agent: no node {args.node!r} in {args.nodes}", file=sys.stderr)
        return 2

    api = NodeApi(args.kubeconfig)
    pod_env = pod_environment(args.api_server or api.host)
    node_ip = args.node_ip or machine_ip()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    isolated = os.environ.get(ISOLATED_ENV) == "1"
    hosts = None
    if args.hosts_file:
        hosts = HostsFile(api, Path(args.hosts_file).resolve(), Path("/etc/hosts").read_text(), node_ip,
                          pod_env["KUBERNETES_SERVICE_HOST"])
        hosts.sync()
        subprocess.run(["mount", "--bind", str(hosts.path), "/etc/hosts"], check=True)
        threading.Thread(target=hosts.run, name="services", daemon=True).start()
    launcher = None if args.no_fork_server else ForkServer(env=pod_env)
    preparer = PodPreparer(api, images, root / "volumes", bind_mounts=os.geteuid() == 0)
    agent = NodeAgent(api, template, root, preparer, pod_env=pod_env, launcher=launcher,
                      lease_seconds=args.lease_seconds, renew_seconds=args.renew_seconds,
                      status_seconds=args.status_seconds, crash_backoff_seconds=args.crash_backoff_seconds,
                      node_ip=node_ip, version=f"fedtask-node-agent/{__version__}")

    def on_signal(signum, frame):  # as PID 1 of a namespace, an unhandled SIGTERM would be ignored
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if launcher is not None:  # pay torch's imports while the node registers
        threading.Thread(target=launcher.start, daemon=True).start()
    logging.getLogger("fedtask.agent").info("node %s: serving pods from %s (api %s, isolated %s)",
                                            template["metadata"]["name"], root, api.host, isolated)
    try:
        agent.run()
    finally:
        if hosts is not None:
            hosts.stopping.set()
        if launcher is not None:
            launcher.stop()
        agent.kubelet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
