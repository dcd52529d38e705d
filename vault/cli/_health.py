"""``pdvault health``: the gRPC health check of a node, as a probe runs it.

    pdvault health --target grpcs://127.0.0.1:50051 --ca ca.pem \\
        --cert peer.pem --key peer-key.pem --server-name de.pdvault.example.net

Exits 0 when the node answers SERVING, 1 otherwise (NOT_SERVING, unreachable,
TLS refused, timeout). Kubernetes' own gRPC probe cannot speak TLS, and a
node serves only TLS off loopback, so the Deployment runs this as an exec
probe inside the pod (``deploy/k8s``).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vault.cli import _connect
from vault.client import channel_credentials


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("health", help="check a node's gRPC health (exit 0: SERVING)")
    p.add_argument("--target", required=True, help="host:port, or grpcs://host:port for TLS")
    _connect.add_flags(p, target=False)
    p.add_argument(
        "--server-name",
        help="the name the server's certificate is checked against, when it is not the "
        "target's host (a probe dialling 127.0.0.1)",
    )
    p.add_argument("--service", default="", help="the service to ask about (default: the server)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")


def run(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        raise SystemExit("pdvault: --cert and --key go together")
    address, creds = channel_credentials(
        args.target,
        ca=_connect.read_file(args.ca, "--ca"),
        cert=_connect.read_file(args.cert, "--cert"),
        key=_connect.read_file(args.key, "--key"),
    )
    options = []
    if args.server_name:
        if creds is None:
            raise SystemExit("pdvault: --server-name applies to TLS only")
        options.append(("grpc.ssl_target_name_override", args.server_name))
    channel = (
        grpc.secure_channel(address, creds, options)
        if creds is not None
        else grpc.insecure_channel(address, options)
    )
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"pdvault: health check failed: {e.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1
