# pdvault node: the control mount ${control_mount}, shared by every region.
#
# Only the key that wraps the token signing key (${signing_key}): a node
# unwraps the signing key at start and wraps a new one when none exists yet.

path "${control_mount}/encrypt/${signing_key}" {
  capabilities = ["update"]
}

path "${control_mount}/decrypt/${signing_key}" {
  capabilities = ["update"]
}
