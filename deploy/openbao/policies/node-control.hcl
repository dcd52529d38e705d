# pdvault node: the control mount ${control_mount}, shared by every region.
#
# Only the key that wraps the token signing key (${signing_key}): a node
# unwraps the signing key at start and wraps a new one when none exists yet;
# and the control audit log's checkpoint key pdvault-audit (sign, and read its
# public half).

path "${control_mount}/encrypt/${signing_key}" {
  capabilities = ["update"]
}

path "${control_mount}/decrypt/${signing_key}" {
  capabilities = ["update"]
}

path "${control_mount}/sign/pdvault-audit" {
  capabilities = ["update"]
}

path "${control_mount}/keys/pdvault-audit" {
  capabilities = ["read"]
}
