"""Settings, read once into frozen objects.

``regions/regions.yaml`` is validated here: every problem found is reported at
once in a :class:`~vault.errors.ConfigError`, and a node refuses to start on an
invalid file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vault._countries import ISO_3166_ALPHA2
from vault.errors import ConfigError, ConfigProblem, FieldViolation, InvalidArgument
from vault.tokens import TRANSFER_BASES

if TYPE_CHECKING:
    # vault.residency imports this module; see _transfer_types.
    from vault.residency import TransferRule, TransferRules

REGION_IDS = ("cn", "us", "de", "ru", "sg")
_REGION_RE = re.compile(r"^[a-z]{2}$")
_MOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
#: Purpose and category names, as in the policy and in tokens.
_TAXONOMY_RE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*$")
_TRANSFER_RULE_KEYS = ("to", "bases", "purposes", "categories")
#: A node identity: what a node's mTLS client certificate names (its CN, or its
#: SANs). No comma (``client_identity`` joins several names with commas), no space.
_NODE_IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")


def default_node_identity(region: str) -> str:
    """The client-certificate identity of the nodes of ``region`` unless the
    regions file names another (``node_identity``)."""
    return f"pdvault-node.{region}"


def default_regions_file() -> Path:
    """``$PDVAULT_REGIONS``, else the ``regions/regions.yaml`` of this checkout."""
    env = os.environ.get("PDVAULT_REGIONS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "regions" / "regions.yaml"


@dataclass(frozen=True)
class RegionConfig:
    id: str
    name: str
    jurisdiction: str
    endpoint: str
    database_url: str
    openbao_address: str
    transit_mounts: tuple[str, ...]
    #: The identity (client certificate CN or SANs, exactly) of this region's
    #: nodes when they forward a request to another region's node: only a peer
    #: presenting it may say a request entered by this region.
    node_identity: str = ""
    #: Scheduled subject key rotation (``key_rotation`` in regions.yaml), or None.
    key_rotation: KeyRotationPolicy | None = None
    #: Scheduled blind-index re-index (``index_rotation`` in regions.yaml), or
    #: None: once the newest index key version is ``period_seconds`` old, a new
    #: one is made and every lookup re-indexed, at most ``rate_per_second``
    #: subjects/s (vault.rotation.LookupReindex; never drops unsealed lookups).
    index_rotation: KeyRotationPolicy | None = None
    #: Mounts of ``transit_mounts`` served by another OpenBao cluster than
    #: ``openbao_address``: (mount, address) pairs (``openbao.clusters`` in
    #: regions.yaml). Every other mount is at ``openbao_address``, which also
    #: holds the region's own keys (blind index, audit signing) in its first mount.
    mount_addresses: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.node_identity:
            object.__setattr__(self, "node_identity", default_node_identity(self.id))

    def address_of(self, mount: str) -> str:
        """The address of the OpenBao cluster holding ``mount``."""
        for m, address in self.mount_addresses:
            if m == mount:
                return address
        return self.openbao_address

    def clusters(self) -> dict[str, tuple[str, ...]]:
        """Every OpenBao cluster of the region (address → its mounts), the
        first one first."""
        out: dict[str, list[str]] = {self.openbao_address: []}
        for m in self.transit_mounts:
            out.setdefault(self.address_of(m), []).append(m)
        return {a: tuple(ms) for a, ms in out.items()}


@dataclass(frozen=True)
class KeyRotationPolicy:
    """A region's rotation schedule: every subject key is rotated once it is
    ``period_seconds`` old (since creation or its last rotation), by the nodes
    that hold a rotation credential, at most ``rate_per_second`` subjects/s."""

    period_seconds: int
    rate_per_second: float


_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """Seconds in ``90d``, ``12h``, ``30m``, ``45s``; None if it is not one."""
    m = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)] if m else None


def _key_rotation(raw: Any, where: str, bad: Any) -> KeyRotationPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"period", "rate_per_second"}:
        bad(where, "must be a mapping with period (like 90d) and rate_per_second")
        return None
    period = parse_duration(raw.get("period", ""))
    rate = raw.get("rate_per_second", 10)
    ok = True
    if not period:
        bad(f"{where}.period", "must be a positive duration like 90d, 12h or 30m")
        ok = False
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        bad(f"{where}.rate_per_second", "must be a positive number")
        ok = False
    return KeyRotationPolicy(int(period or 0), float(rate)) if ok else None


@dataclass(frozen=True)
class ControlConfig:
    """The shared control plane: its database and the Transit mount of its keys."""

    database_url: str
    openbao_address: str
    transit_mount: str
    #: Scheduled rotation of the token and receipt signing key
    #: (``control.signing_key_rotation: {period: 90d}``), in seconds; None: by
    #: hand only (``pdvault token rotate-key``).
    signing_key_rotation_seconds: int | None = None


def _openbao_clusters(bao: Any, where: str, bad: Any) -> list[tuple[str, list[str]]]:
    """A region's ``openbao``: ``{address, mounts}`` (one cluster) or
    ``{clusters: [{address, mounts}, …]}`` (several; subjects are sharded over
    every mount of every cluster). [] after reporting any problem."""
    if isinstance(bao, dict) and "clusters" in bao:
        if set(bao) != {"clusters"}:
            bad(where, "has either clusters or address and mounts, not both")
            return []
        raw = bao["clusters"]
        if not isinstance(raw, list) or not raw:
            bad(f"{where}.clusters", "must list at least one OpenBao cluster")
            return []
        entries = [(f"{where}.clusters[{i}]", c) for i, c in enumerate(raw)]
    else:
        entries = [(where, bao)]
    out: list[tuple[str, list[str]]] = []
    ok = True
    seen_mounts: set[str] = set()
    seen_addresses: set[str] = set()
    for at, c in entries:
        if not isinstance(c, dict) or set(c) - {"address", "mounts"}:
            bad(at, "must be a mapping with address and mounts")
            ok = False
            continue
        address = str(c.get("address") or "")
        if not address:
            bad(f"{at}.address", "is required")
            ok = False
        elif address in seen_addresses:
            bad(f"{at}.address", "is listed for two clusters (one cluster, one entry)")
            ok = False
        seen_addresses.add(address)
        mounts = c.get("mounts") or []
        if not isinstance(mounts, list) or not mounts:
            bad(f"{at}.mounts", "must list at least one transit mount")
            ok = False
            continue
        for m in mounts:
            if not isinstance(m, str) or not _MOUNT_RE.fullmatch(m):
                bad(f"{at}.mounts", f"has an invalid mount name {m!r}")
                ok = False
            elif m in seen_mounts:
                bad(f"{at}.mounts", f"lists the mount {m!r} twice in the region")
                ok = False
            else:
                seen_mounts.add(m)
        out.append((address, [str(m) for m in mounts]))
    return out if ok else []


def _signing_key_rotation(raw: Any, where: str, bad: Any) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"period"}:
        bad(where, "must be a mapping with only period (like 90d)")
        return None
    period = parse_duration(raw["period"])
    if not period:
        bad(f"{where}.period", "must be a positive duration like 90d, 12h or 30m")
        return None
    return period


def _transfer_types() -> tuple[type[TransferRule], type[TransferRules]]:
    """The rule classes, imported when first needed: vault.residency imports this module."""
    from vault.residency import TransferRule, TransferRules

    return TransferRule, TransferRules


def _no_transfers() -> TransferRules:
    return _transfer_types()[1]()


@dataclass(frozen=True)
class RegionsConfig:
    version: int
    regions: dict[str, RegionConfig]
    country_region: dict[str, str]
    default_region: str
    control: ControlConfig
    source: str = "<memory>"
    #: Cross-border transfer rules (the ``transfers`` section); by default none.
    transfers: TransferRules = field(default_factory=_no_transfers)

    @property
    def region_ids(self) -> frozenset[str]:
        return frozenset(self.regions)

    def node_region(self, identity: str | None) -> str | None:
        """The region whose nodes present ``identity`` (exactly), or None."""
        if not identity:
            return None
        for r in self.regions.values():
            if r.node_identity == identity:
                return r.id
        return None

    def region_for(self, country: str, requested: str = "") -> str:
        """The residency region of a person living in ``country``.

        ``requested``, when given, must agree with the country's rule: a caller
        cannot pin a German resident's data to another region.
        """
        cc = country.strip().upper()
        if not cc:
            raise InvalidArgument(FieldViolation("country", "is required"))
        if cc not in ISO_3166_ALPHA2:
            raise InvalidArgument(
                FieldViolation("country", "is not an ISO 3166-1 alpha-2 country code")
            )
        region = self.country_region.get(cc, self.default_region)
        if requested and requested != region:
            if requested not in self.regions:
                raise InvalidArgument(FieldViolation("region", "is not a known region"))
            raise InvalidArgument(
                FieldViolation("region", "does not agree with the residency rule for the country")
            )
        return region


@dataclass(frozen=True)
class CacheSettings:
    """Bounds of the in-process cache of unwrapped data keys."""

    max_entries: int = 10_000
    max_age_seconds: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_age_seconds > 0


@dataclass(frozen=True)
class PoolSettings:
    """Connections a node keeps to each PostgreSQL database (per cell and for
    the control plane). A SQLite file is sized by the vault itself: it keeps a
    read connection per thread."""

    size: int = 10
    max_overflow: int = 20
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.size < 1 or self.max_overflow < 0 or self.timeout_seconds <= 0:
            raise ValueError("pool size must be >= 1, overflow >= 0, timeout > 0")


@dataclass(frozen=True)
class KeyPoolSettings:
    """The subject-key pool a node keeps filled in each region it serves.

    ``size`` entries per region (0: this node mints none, but still claims
    what other nodes minted); the filler adds at most ``batch`` per round,
    ``concurrency`` key-service calls at a time, and looks again every
    ``poll_seconds``. While entries are claimed faster than
    ``burst_claims_per_second`` (by any node: the pool's depth falls), the
    filler waits for the burst to end, unless the pool holds a batch or less:
    minting competes with the calls for the CPU and the key service, and the
    pool exists to serve such bursts from what was minted in quieter times
    (once it is nearly empty, the filler keeps up with sign-ups as it can).
    """

    size: int = 0
    batch: int = 50
    concurrency: int = 4
    poll_seconds: float = 1.0
    burst_claims_per_second: float = 50.0
    #: The regions this node fills pools for (None: every region it serves).
    regions: frozenset[str] | None = None

    def fills(self, region: str) -> bool:
        return self.size > 0 and (self.regions is None or region in self.regions)

    def __post_init__(self) -> None:
        if (
            self.size < 0
            or self.batch < 1
            or self.concurrency < 1
            or self.poll_seconds <= 0
            or self.burst_claims_per_second <= 0
        ):
            raise ValueError(
                "pool size must be >= 0, batch and concurrency >= 1, poll and burst rate > 0"
            )


@dataclass(frozen=True)
class Limits:
    """Size limits; exceeding one is RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_fields: int = 64
    max_field_name: int = 128
    max_field_value: int = 64 * 1024
    max_record_bytes: int = 256 * 1024
    max_page_size: int = 500
    default_page_size: int = 50


@dataclass(frozen=True)
class TlsSettings:
    """The server side of TLS (PEM files, read when the server starts).

    ``client_ca_file`` turns on mutual TLS: every connection must present a
    client certificate signed by one of the CAs in it, or the handshake fails.
    See :mod:`vault.transport`.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class PeerTlsSettings:
    """How a node calls the nodes of other regions (forwarding): mutual TLS.

    ``ca_file`` is the CA the peers' server certificates chain to;
    ``cert_file``/``key_file`` the client certificate this node presents,
    whose identity must be its region's ``node_identity`` for the peer to
    accept the entry region it reports.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    #: TLS, or mutual TLS with a client CA. ``None`` is plaintext, allowed on a
    #: loopback host only (``--insecure-local``, local development).
    tls: TlsSettings | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    #: The subject-key pool (vault.cell._pool); ``db_pool`` is the database's.
    pool: KeyPoolSettings = field(default_factory=KeyPoolSettings)
    limits: Limits = field(default_factory=Limits)
    openbao_timeout_seconds: float = 5.0
    #: How often a node looks for erasures whose grace period has ended.
    erasure_poll_seconds: float = 5.0
    #: How often a node deletes records whose retention has ended (and reaps
    #: orphan keys, forgets long-expired revocations).
    retention_sweep_seconds: float = 3600.0
    #: The first sweep comes this soon after start (so that nodes restarted
    #: more often than the sweep period still sweep).
    retention_first_sweep_seconds: float = 60.0
    #: How often a node with a rotation credential runs the regions' scheduled
    #: subject key rotation (regions.yaml ``key_rotation``).
    rotation_check_seconds: float = 3600.0
    #: gRPC server reflection: off unless asked for (it lists the whole API to
    #: anyone who can connect).
    reflection: bool = False
    #: Node-to-node mutual TLS for forwarding (see :class:`PeerTlsSettings`);
    #: ``None``: plaintext, only to loopback endpoints (local development).
    peer_tls: PeerTlsSettings | None = None
    #: How long a forwarded call may take when the caller set no deadline.
    forward_timeout_seconds: float = 30.0
    #: How often a node pings the nodes it forwards to (HTTP/2 keepalive), so
    #: that a connection a firewall or load balancer dropped while idle is
    #: noticed and replaced before calls wait on it, and an idle one is not dropped.
    peer_keepalive_seconds: float = 30.0
    #: The shortest interval at which this node accepts a peer's pings on a
    #: connection without calls in flight; faster pingers are disconnected
    #: (gRPC's "too_many_pings"). Below ``peer_keepalive_seconds``.
    min_ping_interval_seconds: float = 10.0
    #: Connection pool of each PostgreSQL database.
    db_pool: PoolSettings = field(default_factory=PoolSettings)
    #: Port of the Prometheus endpoint (``/metrics``); None: no endpoint and no
    #: per-request instrumentation. 0 picks a free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: ``json``: every unary call gets a request id for its log lines (vault.logs).
    log_format: str = "text"
    #: How often gRPC health checks the databases and OpenBao (NOT_SERVING while
    #: one does not answer).
    health_probe_seconds: float = 2.0
    #: The audit log (vault.audit). Off only to measure what it costs
    #: (``loadtests/bench.py``); a node serving personal data keeps it on.
    audit: bool = True
    #: A signed checkpoint every this many entries, or this many seconds after
    #: the last one when entries came since.
    audit_checkpoint_entries: int = 1000
    audit_checkpoint_seconds: float = 60.0
    #: How long a request waits for its audit entry to be durable before it
    #: fails UNAVAILABLE (AUDIT_UNAVAILABLE).
    audit_timeout_seconds: float = 5.0
    #: The longest an audit entry waits for the entries of other callers' calls
    #: to share its commit (``--audit-batch-ms``); it waits only while other
    #: calls are in progress (vault.audit._writer). 0: commit after each turn.
    audit_batch_window_seconds: float = 0.008  # vault.audit.DEFAULT_BATCH_WINDOW
    #: SQLite audit files: sync every commit to disk (``synchronous=FULL``)
    #: rather than to the write-ahead log, like the cells (``NORMAL``).
    audit_fsync: bool = False
    #: Bind the port with SO_REUSEPORT: several worker processes of one node
    #: share it (``--workers``, :mod:`vault.cli._workers`).
    reuse_port: bool = False


def _endpoint_problem(endpoint: object) -> str | None:
    """Why ``endpoint`` is not ``host:port`` (port 1-65535), or None if it is.

    The host is a DNS name, an IPv4 address or a bracketed IPv6 address.
    """
    if not isinstance(endpoint, str):
        return "must be a string host:port"
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        return "must be host:port"
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        return "must end in a port from 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "has an invalid IPv6 address"
        return None
    if not _HOSTNAME_RE.fullmatch(host):
        return "must name a host (DNS name, IPv4 address or [IPv6 address])"
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "has an invalid IPv4 address"
    return None


def _substitute(value: str, variables: dict[str, str]) -> str:
    for k, v in variables.items():
        value = value.replace("{" + k + "}", v)
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that notes every mapping key given twice.

    PyYAML keeps the last of two equal keys without a word: a second ``de:``
    under ``countries`` would silently send every country of the first list
    to the default region.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[ConfigProblem] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    self.repeated.append(
                        ConfigProblem(
                            f"line {key_node.start_mark.line + 1}",
                            f"repeats the key {key!r} of its mapping",
                        )
                    )
                seen.add(key)
            except TypeError:  # unhashable: the base constructor reports it
                pass
        return super().construct_mapping(node, deep=deep)


def load_regions(path: Path | None = None, **variables: str) -> RegionsConfig:
    """Reads and validates a regions file; ``variables`` fill ``{placeholders}``."""
    path = path or default_regions_file()
    try:
        loader = _UniqueKeyLoader(path.read_text())
    except OSError as e:
        raise ConfigError(
            str(path), [ConfigProblem("file", f"cannot be read ({e.strerror})")]
        ) from e
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [ConfigProblem("file", "is not valid YAML")]) from e
    finally:
        loader.dispose()
    try:
        cfg = parse_regions(raw, source=str(path), variables=variables)
    except ConfigError as e:
        if loader.repeated:
            raise ConfigError(str(path), loader.repeated + e.problems) from None
        raise
    if loader.repeated:
        raise ConfigError(str(path), loader.repeated)
    return cfg


def parse_regions(
    raw: Any, *, source: str = "<memory>", variables: dict[str, str] | None = None
) -> RegionsConfig:
    variables = variables or {}
    problems: list[ConfigProblem] = []

    def bad(where: str, problem: str) -> None:
        problems.append(ConfigProblem(where, problem))

    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("file", "must be a mapping")])
    version = raw.get("version")
    if version != 1:
        bad("version", "must be 1")

    regions: dict[str, RegionConfig] = {}
    # Every id declared, valid entry or not: a problem inside an entry is
    # reported there once, not again wherever the id is used.
    declared: list[str] = []
    identities: dict[str, str] = {}
    raw_regions = raw.get("regions")
    if not isinstance(raw_regions, list) or not raw_regions:
        bad("regions", "must be a non-empty list")
        raw_regions = []
    for i, r in enumerate(raw_regions):
        where = f"regions[{i}]"
        if not isinstance(r, dict):
            bad(where, "must be a mapping")
            continue
        rid = r.get("id")
        if not isinstance(rid, str) or not _REGION_RE.fullmatch(rid):
            bad(f"{where}.id", "must be a two-letter lowercase region id")
            continue
        where = f"regions[{rid}]"
        if rid in declared:
            bad(where, "is declared twice")
            continue
        declared.append(rid)
        missing = [k for k in ("name", "jurisdiction", "endpoint", "database_url") if not r.get(k)]
        for k in missing:
            bad(f"{where}.{k}", "is required")
        endpoint = r.get("endpoint")
        if isinstance(endpoint, str):
            endpoint = _substitute(endpoint, variables)
        endpoint_problem = None if "endpoint" in missing else _endpoint_problem(endpoint)
        if endpoint_problem:
            bad(f"{where}.endpoint", endpoint_problem)
        bao = r.get("openbao")
        clusters = _openbao_clusters(bao, f"{where}.openbao", bad)
        address = clusters[0][0] if clusters else ""
        mounts = [m for _, ms in clusters for m in ms]
        elsewhere = tuple((m, _substitute(a, variables)) for a, ms in clusters[1:] for m in ms)
        identity = r.get("node_identity", default_node_identity(rid))
        identity_bad = not isinstance(identity, str) or not _NODE_IDENTITY_RE.fullmatch(identity)
        if identity_bad:
            bad(
                f"{where}.node_identity",
                "must be a certificate identity (letters, digits, . _ : / @ -; no comma or space)",
            )
        elif identity in identities:
            bad(
                f"{where}.node_identity",
                f"is already the node identity of {identities[identity]}: "
                "one identity could then speak for two regions",
            )
        else:
            identities[identity] = rid
        rotation = _key_rotation(r.get("key_rotation"), f"{where}.key_rotation", bad)
        reindex = _key_rotation(r.get("index_rotation"), f"{where}.index_rotation", bad)
        if missing or endpoint_problem or not clusters or identity_bad:
            continue
        regions[rid] = RegionConfig(
            id=rid,
            name=str(r["name"]),
            jurisdiction=str(r["jurisdiction"]),
            endpoint=str(endpoint),
            database_url=_substitute(str(r["database_url"]), variables),
            openbao_address=_substitute(address, variables),
            transit_mounts=tuple(str(m) for m in mounts),
            node_identity=str(identity),
            key_rotation=rotation,
            mount_addresses=elsewhere,
            index_rotation=reindex,
        )

    default_region = raw.get("default_region")
    if default_region not in declared:
        bad("default_region", "must name a declared region")

    country_region: dict[str, str] = {}
    countries = raw.get("countries") or {}
    if not isinstance(countries, dict):
        bad("countries", "must map region ids to lists of country codes")
        countries = {}
    for rid, codes in countries.items():
        if rid not in declared:
            bad(f"countries.{rid}", "is not a declared region")
            continue
        if not isinstance(codes, list):
            bad(f"countries.{rid}", "must be a list of country codes")
            continue
        for cc in codes:
            if not isinstance(cc, str) or cc not in ISO_3166_ALPHA2:
                bad(f"countries.{rid}", f"{cc!r} is not an ISO 3166-1 alpha-2 code")
            elif cc in country_region:
                bad(f"countries.{rid}", f"{cc} is already mapped to {country_region[cc]}")
            else:
                country_region[cc] = rid

    control = raw.get("control")
    control_cfg = ControlConfig("", "", "")
    if not isinstance(control, dict):
        bad("control", "must be a mapping with database_url and openbao")
    else:
        cbao = control.get("openbao")
        if not control.get("database_url"):
            bad("control.database_url", "is required")
        if not isinstance(cbao, dict) or not cbao.get("address"):
            bad("control.openbao.address", "is required")
        elif not isinstance(cbao.get("mount"), str) or not _MOUNT_RE.fullmatch(cbao["mount"]):
            bad("control.openbao.mount", "must name a transit mount")
        else:
            control_cfg = ControlConfig(
                database_url=_substitute(str(control["database_url"]), variables),
                openbao_address=_substitute(str(cbao["address"]), variables),
                transit_mount=str(cbao["mount"]),
                signing_key_rotation_seconds=_signing_key_rotation(
                    control.get("signing_key_rotation"), "control.signing_key_rotation", bad
                ),
            )

    transfers = _parse_transfers(raw.get("transfers", {}), declared, problems)

    if problems or transfers is None:
        raise ConfigError(source, problems)
    return RegionsConfig(
        version=1,
        regions=regions,
        country_region=country_region,
        default_region=str(default_region),
        control=control_cfg,
        source=source,
        transfers=transfers,
    )


def _parse_transfers(
    raw: Any, declared: list[str], problems: list[ConfigProblem]
) -> TransferRules | None:
    """The ``transfers`` section: ``{home: [{to, bases, purposes?, categories?}, …]}``.

    Every problem is appended to ``problems``; None if there was any.
    """
    rule_type, rules_type = _transfer_types()

    def bad(where: str, problem: str) -> None:
        problems.append(ConfigProblem(where, problem))

    if not isinstance(raw, dict):
        bad("transfers", "must map home region ids to lists of rules")
        return None
    first = len(problems)
    rules: list[TransferRule] = []
    for home, raw_rules in raw.items():
        if home not in declared:
            bad(f"transfers.{home}", "is not a declared region")
            continue
        if not isinstance(raw_rules, list):
            bad(f"transfers.{home}", "must be a list of rules ([] for none)")
            continue
        for i, raw_rule in enumerate(raw_rules):
            where = f"transfers.{home}[{i}]"
            if not isinstance(raw_rule, dict):
                bad(where, "must be a mapping with to and bases")
                continue
            before = len(problems)
            for key in raw_rule:
                if key not in _TRANSFER_RULE_KEYS:
                    bad(f"{where}.{key}", f"is not a known key ({', '.join(_TRANSFER_RULE_KEYS)})")
            to = _names(raw_rule, "to", "region id", where, bad)
            for dest in to or ():
                if dest == home:
                    bad(f"{where}.to", f"names {home} itself: data at home is not a transfer")
                elif dest not in declared:
                    bad(f"{where}.to", f"{dest!r} is not a declared region")
            bases = _names(raw_rule, "bases", "transfer basis", where, bad)
            for basis in bases or ():
                if basis not in TRANSFER_BASES:
                    known = ", ".join(sorted(TRANSFER_BASES))
                    bad(f"{where}.bases", f"{basis!r} is not a transfer basis ({known})")
            purposes = _names(raw_rule, "purposes", "purpose", where, bad, optional=True)
            categories = _names(raw_rule, "categories", "category", where, bad, optional=True)
            if len(problems) > before or to is None or bases is None:
                continue
            rules.append(
                rule_type(
                    home=home,
                    destinations=frozenset(to),
                    bases=frozenset(bases),
                    purposes=None if purposes is None else frozenset(purposes),
                    categories=None if categories is None else frozenset(categories),
                )
            )
    if len(problems) > first:
        return None
    return rules_type(regions=tuple(declared), rules=tuple(rules))


def _names(
    rule: dict[Any, Any],
    key: str,
    noun: str,
    where: str,
    bad: Callable[[str, str], None],
    *,
    optional: bool = False,
) -> list[str] | None:
    """``rule[key]``: a non-empty list of distinct strings; None (and reported) if not.

    An optional key left out is None without a problem: no limit. Purpose and
    category names must be well-formed (``a.b_c``).
    """
    where = f"{where}.{key}"
    if key not in rule:
        if not optional:
            bad(where, "is required")
        return None
    value = rule[key]
    hint = f" (leave it out for any {noun})" if optional else ""
    if not isinstance(value, list):
        bad(where, f"must be a list of {noun} names{hint}")
        return None
    if not value:
        bad(where, f"must list at least one {noun}{hint}")
        return None
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or (optional and not _TAXONOMY_RE.fullmatch(item)):
            bad(where, f"{item!r} is not a {noun} name")
        elif item in names:
            bad(where, f"lists {item} twice")
        else:
            names.append(item)
    return names
