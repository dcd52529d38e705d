"""``pdvault demo``: the whole story against the running local stack, in the terminal."""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hvac
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from vault.cli import _connect
from vault.cli._audit import access_table, places_of, public_keys, verify_all
from vault.client import VaultClient, VaultClientError
from vault.config import RegionsConfig, load_regions
from vault.crypto import dek_associated_data
from vault.datadir import DataDir
from vault.devstack import OpenBaoServer
from vault.erasure import verify_receipt
from vault.errors import DecryptionFailed
from vault.keys import KeyRef, TransitKeyProvider

_RULE_RE = re.compile(r"by rule (\S+);")
PEOPLE = (
    ("Ada", "Lovelace", "FR", "ada@example.org"),
    ("Bob", "Smith", "US", "bob@example.com"),
    ("Li", "Na", "CN", "li.na@example.cn"),
)


def run(args: argparse.Namespace) -> int:
    con = Console()
    data_dir: Path = args.data_dir.resolve()
    layout = DataDir(data_dir)
    try:
        target = layout.endpoint.read_text().strip()
        admin_credential = layout.admin_credential.read_text().strip()
    except OSError:
        con.print(f"[red]No running local stack in {data_dir}: start it with `make run`.")
        return 1

    # The five-region topology (`pdvault up --regions-mode five`): one node per
    # region; each person is created through a node of their home region, and
    # step 3 crosses a border for real.
    endpoints = layout.region_endpoints()
    five = target in endpoints.values()
    regions_file = layout.five / "regions.yaml" if five else None
    regions = load_regions(regions_file, data_dir=str(data_dir), openbao_addr="-")

    def connect(token: str, at: str | None = None) -> VaultClient:
        return _connect.connect(args, token, at or target)

    def home(region: str) -> str:
        """The endpoint of a node of ``region`` (the one endpoint of a one-process stack)."""
        return endpoints.get(region, target) if five else target

    admin = connect(admin_credential)

    def issue(purpose: str, categories: list[str], ops: list[str], basis: str = "") -> str:
        return admin.issue_token(
            service="demo",
            purpose=purpose,
            categories=categories,
            operations=ops,
            transfer_basis=basis,
            ttl_seconds=900,
        ).token

    def token(purpose: str, categories: list[str], ops: list[str]) -> VaultClient:
        return connect(issue(purpose, categories, ops))

    con.rule("[bold]pdvault demo")
    if five:
        con.print(
            f"Talking to the five-region local stack: entry node [cyan]{target}[/] "
            f"({len(endpoints)} nodes, data in {data_dir}).\n"
        )
    else:
        con.print(f"Talking to the local stack at [cyan]{target}[/] (data in {data_dir}).\n")

    shop_token = issue("essential.service", ["user.name", "user.contact.email"], ["read", "write"])
    shop = connect(shop_token)
    rights = token(
        "essential.subject_rights", ["user.name", "user.contact.email"], ["read", "export", "erase"]
    )
    notify = token("essential.service.notifications", ["user.name", "user.contact.email"], ["read"])
    ads = token("marketing.communications.email", ["user.name", "user.contact.email"], ["read"])

    # 1. People in three regions.
    table = Table(title="1. Three people, pinned to their residency regions")
    for col in ("person", "country", "region", "subject id", "records"):
        table.add_column(col)
    people = []
    for first, last, country, email in PEOPLE:
        # Through a node of the person's home region: no plaintext (name, e-mail
        # lookup) crosses a border to sign them up.
        at_home = connect(shop_token, home(regions.region_for(country)))
        s = at_home.create_subject(country, lookups={"email": email})
        name = at_home.put_record(s.subject_id, "user.name", {"first": first, "last": last})
        mail = at_home.put_record(s.subject_id, "user.contact.email", {"address": email})
        people.append((first, s, name, mail))
        table.add_row(first, country, s.region, s.subject_id, "name, email")
    con.print(table)
    con.print(
        "Each person has their own non-exportable key in their region's OpenBao mount; "
        "the database holds only ciphertext."
        + (" Each was created through their home region's node.\n" if five else "\n")
    )

    _, ada_subject, ada_name, _ = people[0]
    # 2. Reads under three purposes.
    table = Table(title="2. Who sees what: one record, three purposes")
    table.add_column("purpose")
    table.add_column("result")
    full = shop.get_record(ada_name.record_id)
    table.add_row("essential.service", f"[green]{dict(full.fields)}")
    filtered = notify.get_record(ada_name.record_id)
    table.add_row(
        "essential.service.notifications", f"[yellow]{dict(filtered.fields)}[/] (filtered)"
    )
    try:
        ads.get_record(ada_name.record_id)
        table.add_row("marketing.communications.email", "[red]read?!")
    except VaultClientError as e:
        table.add_row("marketing.communications.email", f"[red]{e.code.name}[/] {e.reason}")
    con.print(table)
    found = shop.find_subjects("email", "ADA@example.org", all_regions=True)
    con.print(f"Lookup by e-mail (blind index, nothing decrypted): {found}\n")

    # 3. Cross-border transfers.
    if five:
        _transfers_for_real(
            con, ada_subject.subject_id, ada_name.record_id, endpoints, issue, connect, rights
        )
    else:
        _transfers_explained(con, regions)

    # 4. Export.
    doc = rights.export_subject(ada_subject.subject_id)
    con.print(
        Panel(
            f"{len(doc['records'])} records, {len(doc['consents'])} consents, "
            f"format {doc['format']} v{doc['version']}",
            title="4. Ada's export (portability, GDPR Art. 20)",
        )
    )

    # Who has read Ada's data so far (asked now: after her erasure nobody can).
    ada_accesses = rights.access_report(ada_subject.subject_id)

    # 5. A backup, then the erasure.
    backup = Path(tempfile.mkdtemp(prefix="pdvault-demo-backup-"))
    for f in (data_dir / "cells").glob(f"{ada_subject.region}.db*"):
        shutil.copy2(f, backup / f.name)
    receipt = rights.erase_subject(ada_subject.subject_id, reason="subject_request")
    table = Table(title="5. Ada is erased: the receipt, signed by the vault")
    table.add_column("field")
    table.add_column("value")
    table.add_row("subject", receipt.subject_id)
    table.add_row(
        "key destroyed", f"{receipt.key_name} (versions {list(receipt.key_versions_destroyed)})"
    )
    table.add_row("records affected", str(receipt.records_affected))
    table.add_row("evidence", receipt.evidence)
    verify_receipt(receipt.signed_receipt, layout.read_receipt_keys())
    table.add_row("signature", "[green]verified offline with the public verification keys")
    con.print(table)

    # 6. Proof.
    table = Table(title="6. Can Ada's data still be read?")
    table.add_column("where")
    table.add_column("answer")
    try:
        shop.get_record(ada_name.record_id)
        table.add_row("the API", "[red]yes?!")
    except VaultClientError as e:
        table.add_row("the API", f"[green]no[/] ({e.code.name})")
    with sqlite3.connect(backup / f"{ada_subject.region}.db") as db:
        wrapped, mount, key, derived = db.execute(
            "SELECT wrapped_dek, key_mount, key_name, key_derived FROM subjects WHERE id = ?",
            (ada_subject.subject_id,),
        ).fetchone()
        (envelope,) = db.execute(
            "SELECT envelope FROM records WHERE id = ?", (ada_name.record_id,)
        ).fetchone()
    bao = OpenBaoServer(data_dir, log=False)
    root = TransitKeyProvider.connect(bao.address, bao.root_token())
    try:
        root.unwrap(
            KeyRef(mount, key, bool(derived)),
            wrapped,
            dek_associated_data(ada_subject.subject_id, ada_subject.region),
        )
        table.add_row("a backup taken before the erasure", "[red]the key still opens?!")
    except DecryptionFailed:
        table.add_row(
            "a backup taken before the erasure",
            f"[green]no[/]: the row is there ({len(envelope)} bytes of ciphertext) but OpenBao "
            "refuses to unwrap its data key, even for the root token: the key no longer exists",
        )
    con.print(table)
    shutil.rmtree(backup)
    bob = people[1]
    bob_home = connect(shop_token, home(bob[1].region))
    con.print(f"Bob and Li are untouched: {dict(bob_home.get_record(bob[2].record_id).fields)}")

    # 7. Key rotation.
    _rotation(con, data_dir, bao, bob[1].subject_id, bob[1].region, receipt.signed_receipt)
    con.print(
        f"Bob's record after both rotations: {dict(bob_home.get_record(bob[2].record_id).fields)}"
    )
    # 8. The audit log, and what it told Ada before she left.
    with_bao = load_regions(regions_file, data_dir=str(data_dir), openbao_addr=bao.address)
    ok = _audit_verified(con, with_bao, bao.root_token())
    con.print(
        access_table(
            ada_accesses,
            "9. Ada's access report (GetAccessReport, asked before her erasure)",
        )
    )
    try:
        rights.access_report(ada_subject.subject_id)
        con.print("[red]Asked again after the erasure: answered?!")
    except VaultClientError as e:
        con.print(
            f"Asked again after the erasure: [green]{e.code.name}[/] {e.reason}. Her entries "
            "are still in the chain, under a pseudonym keyed by her destroyed data key: "
            "nobody can link them to her any more.\n"
        )
    con.rule()
    return 0 if ok else 1


def _audit_verified(con: Console, regions: RegionsConfig, root_token: str) -> bool:
    """``pdvault audit verify`` over every region's log and the control log."""
    places = places_of(regions)
    logs = sorted(places)
    reports = verify_all(places, logs, public_keys(places, logs, root_token), [])
    table = Table(title="8. pdvault audit verify: every chain recomputed, checkpoints checked")
    for col in ("log", "entries", "checkpoints", "result"):
        table.add_column(col)
    ok = True
    for r in reports:
        if r.problem == "no audit database":
            table.add_row(r.log, "-", "-", "[dim]no log here")
            continue
        ok &= r.ok
        result = "[green]ok" if r.ok else f"[red]FAILED: {r.problem}"
        table.add_row(r.log, str(r.entries), str(r.checkpoints), result)
    con.print(table)
    return ok


def _rotation(
    con: Console, data_dir: Path, bao: OpenBaoServer, subject_id: str, region: str, receipt: str
) -> None:
    """Rotates the subject keys of Bob's region and the vault signing key."""
    from vault.cli._keys import status_report
    from vault.keys import TransitKeyRotator
    from vault.rotation import SubjectKeyRotation
    from vault.store import RotationStore, make_engine
    from vault.tokens.keyfiles import rotate_signing_key

    layout = DataDir(data_dir)
    regions = load_regions(
        layout.five / "regions.yaml" if layout.region_endpoints() else None,
        data_dir=str(data_dir),
        openbao_addr=bao.address,
    )
    rc = regions.regions[region]
    root = hvac.Client(url=bao.address, token=bao.root_token())
    name = f"subject-{subject_id}"

    def versions() -> str:
        key = root.secrets.transit.read_key(name=name, mount_point=rc.transit_mounts[0])["data"]
        return f"latest v{key['latest_version']}, kept {sorted(int(v) for v in key['keys'])}"

    table = Table(title=f"7. Key rotation: every subject key of {region}, and the signing key")
    table.add_column("what")
    table.add_column("before")
    table.add_column("after")
    before = versions()
    engine = make_engine(rc.database_url)
    rotator = TransitKeyRotator.connect(rc.openbao_address, bao.rotation_login(regions))
    try:
        done = SubjectKeyRotation(RotationStore(engine), rotator, region).run(0)
    finally:
        bao.retire()  # the rotation login made for this step
        engine.dispose()
    table.add_row(
        f"Bob's key ({done.rotated} subject(s) of {region} rotated, data keys re-wrapped, "
        "old versions trimmed)",
        before,
        versions(),
    )
    control = TransitKeyProvider.connect(regions.control.openbao_address, bao.root_token())
    old_kid = verify_receipt(receipt, layout.read_receipt_keys())["signing_key"]
    new = rotate_signing_key(layout.tokens, control, regions.control.transit_mount, now=time.time())
    table.add_row("signing key (tokens, receipts)", str(old_kid)[:24] + "…", new.new_kid[:24] + "…")
    verify_receipt(receipt, layout.read_receipt_keys())
    table.add_row("Ada's receipt, signed by the old key", "verified", "[green]still verified")
    con.print(table)
    con.print(
        "[dim]"
        + "\n".join(
            status_report(
                data_dir, layout.five / "regions.yaml" if layout.region_endpoints() else None
            )
        )
    )


def _transfers_explained(con: Console, regions: RegionsConfig) -> None:
    """One-process stack: what the regions file's rules decide for Ada's German
    data if a caller entered by another region's node (`pdvault serve`)."""
    rules = regions.transfers
    table = Table(title="3. Ada's data (home de) asked for through another region's node")
    for col in ("entry node", "token transfer_basis", "decision", "rule"):
        table.add_column(col)
    for entry, basis in (("us", "scc"), ("us", None), ("ru", "consent"), ("de", None)):
        d = rules.decide("de", entry, basis, "essential.service", "user.name")
        verdict = "[green]returned" if d.allowed else f"[red]PERMISSION_DENIED {d.reason}"
        table.add_row(entry, basis or "(none)", verdict, d.rule)
    con.print(table)
    con.print(
        "[dim]This one-process stack serves every region itself; with one node per region "
        "(`pdvault up --regions-mode five`, or `pdvault serve --region R`) the home node "
        "decides each crossing and records it.\n"
    )


def _transfers_for_real(
    con: Console,
    subject_id: str,
    record_id: str,
    endpoints: dict[str, str],
    issue: Callable[..., str],
    connect: Callable[..., VaultClient],
    rights: VaultClient,
) -> None:
    """Five-region stack: Ada's record read through other regions' nodes, and
    the transfer records her home cell kept (from her export document)."""
    table = Table(title="3. Ada's data (home de) read through another region's node, for real")
    for col in ("entry node", "token transfer_basis", "answer", "rule"):
        table.add_column(col)
    for entry, basis in (("us", "scc"), ("us", None), ("ru", "consent"), ("de", None)):
        if entry not in endpoints:
            continue
        t = issue("essential.service", ["user.name"], ["read"], basis or "")
        with connect(t, endpoints[entry]) as c:
            try:
                got = c.get_record(record_id)
                answer, rule = f"[green]returned[/] {dict(got.fields)}", ""
            except VaultClientError as e:
                m = _RULE_RE.search(e.message)
                answer, rule = f"[red]{e.code.name}[/] {e.reason}", m.group(1) if m else ""
        table.add_row(f"{entry} ({endpoints[entry]})", basis or "(none)", answer, rule)
    con.print(table)
    doc = rights.export_subject(subject_id)
    table = Table(title="   The transfer records of Ada's home cell (her export's `transfers`)")
    for col in ("operation", "from -> to", "basis", "allowed", "rule", "reason"):
        table.add_column(col)
    for t in doc["transfers"]:
        table.add_row(
            t["operation"],
            f"{t['from_region']} -> {t['to_region']}",
            t["basis"] or "(none)",
            "[green]yes" if t["allowed"] else "[red]no",
            t["rule"],
            t["reason"],
        )
    con.print(table)
    con.print(
        "[dim]The home node (de) decided each crossing by the transfer rules of the regions "
        "file and recorded it (ids and rule only, no data) before anything was returned; the "
        "entry node checked the reply again. At home (de) no border is crossed.\n"
    )
