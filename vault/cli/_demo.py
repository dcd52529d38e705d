"""``pdvault demo``: the whole story against the running local stack, in the terminal."""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from vault.cli import _connect
from vault.client import VaultClient, VaultClientError
from vault.config import load_regions
from vault.crypto import dek_associated_data
from vault.datadir import DataDir
from vault.devstack import OpenBaoServer
from vault.erasure import verify_receipt
from vault.errors import DecryptionFailed
from vault.keys import KeyRef, TransitKeyProvider

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

    def connect(token: str) -> VaultClient:
        return _connect.connect(args, token, target)

    admin = connect(admin_credential)

    def token(purpose: str, categories: list[str], ops: list[str]) -> VaultClient:
        t = admin.issue_token(
            service="demo", purpose=purpose, categories=categories, operations=ops, ttl_seconds=900
        ).token
        return connect(t)

    con.rule("[bold]pdvault demo")
    con.print(f"Talking to the local stack at [cyan]{target}[/] (data in {data_dir}).\n")

    shop = token("essential.service", ["user.name", "user.contact.email"], ["read", "write"])
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
        s = shop.create_subject(country, lookups={"email": email})
        name = shop.put_record(s.subject_id, "user.name", {"first": first, "last": last})
        mail = shop.put_record(s.subject_id, "user.contact.email", {"address": email})
        people.append((first, s, name, mail))
        table.add_row(first, country, s.region, s.subject_id, "name, email")
    con.print(table)
    con.print(
        "Each person has their own non-exportable key in their region's OpenBao mount; "
        "the database holds only ciphertext.\n"
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

    # 3. Cross-border transfers: what the regions file's rules decide for Ada's
    # German data if a caller entered by another region's node (`pdvault serve`).
    rules = load_regions(data_dir=str(data_dir), openbao_addr="-").transfers
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
        "(`pdvault serve --region R`) the home node decides each crossing and records it.\n"
    )

    # 4. Export.
    doc = rights.export_subject(ada_subject.subject_id)
    con.print(
        Panel(
            f"{len(doc['records'])} records, {len(doc['consents'])} consents, "
            f"format {doc['format']} v{doc['version']}",
            title="4. Ada's export (portability, GDPR Art. 20)",
        )
    )

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
    verify_receipt(receipt.signed_receipt, layout.read_keyset())
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
        wrapped, mount, key = db.execute(
            "SELECT wrapped_dek, key_mount, key_name FROM subjects WHERE id = ?",
            (ada_subject.subject_id,),
        ).fetchone()
        (envelope,) = db.execute(
            "SELECT envelope FROM records WHERE id = ?", (ada_name.record_id,)
        ).fetchone()
    bao = OpenBaoServer(data_dir, log=False)
    root = TransitKeyProvider.connect(bao.address, bao.root_token())
    try:
        root.unwrap(
            KeyRef(mount, key),
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
    con.print(f"Bob and Li are untouched: {dict(shop.get_record(bob[2].record_id).fields)}")
    con.rule()
    return 0
