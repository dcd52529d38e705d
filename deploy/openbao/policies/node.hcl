# pdvault node: everyday use of one region's Transit mount ${mount}.
#
# Rendered once per Transit mount of the region (regions.yaml `openbao.mounts`),
# with ${mount} replaced by the mount's path. A node may create subject keys
# and wrap and unwrap data keys with them; nothing else. `+` matches exactly
# one path segment, so "keys/+" does not reach keys/NAME/config, /rotate,
# /trim, and no rule reaches export/, backup/, restore/ or another mount:
# reading key material, reconfiguring or deleting keys is denied. It also signs
# the region's audit checkpoints with the Ed25519 key pdvault-audit (created at
# bootstrap, never exportable) and reads that key's public half.

path "${mount}/keys/+" {
  # create: a new subject key; update: the same create call repeated after a
  # crash (idempotent). The key must be neither exportable nor backed up in
  # plaintext, so a stolen node credential cannot make a key it could export.
  # Subject keys are derived (each wrap bound to its subject by the derivation
  # context, so rotation re-wraps inside OpenBao); the region's blind-index key
  # is created without the parameter. Convergent encryption is not allowed.
  capabilities = ["create", "update"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "derived"                = [true]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

path "${mount}/encrypt/+" {
  capabilities = ["update"]
}

path "${mount}/decrypt/+" {
  capabilities = ["update"]
}

path "${mount}/sign/pdvault-audit" {
  capabilities = ["update"]
}

path "${mount}/keys/pdvault-audit" {
  # The exact path wins over keys/+: read only (the public keys), no create.
  capabilities = ["read"]
}
