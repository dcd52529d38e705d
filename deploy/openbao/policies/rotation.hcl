# pdvault key rotation: rotates subject keys on the region's Transit mount ${mount}.
#
# Rendered once per Transit mount of the region. Lists and reads keys, adds a
# new version, sets the minimum versions and the automatic rotation period,
# trims old versions and re-wraps data keys to the newest version. It cannot
# delete, export or back up a key, or allow deletion.
#
# Re-wrapping a derived subject key (every subject key made since cell
# revision 0008) is Transit's rewrap with the wrap's derivation context: the
# data key never leaves OpenBao in clear.
#
# decrypt and encrypt are here ONLY for the legacy (non-derived) subject keys:
# their wraps are bound by associated data, which rewrap does not take, so
# they are re-wrapped by decrypt + encrypt (this role then sees a data key for
# the moment of its re-wrap). Once no subject of the region has a legacy key
# (`SELECT count(*) FROM subjects WHERE NOT key_derived` is 0), remove those
# two paths from the applied policy. It is a job's credential, held only by
# nodes and tools that rotate keys.

path "${mount}/keys" {
  capabilities = ["list"]
}

path "${mount}/keys/+" {
  capabilities = ["read"]
}

path "${mount}/keys/+/rotate" {
  capabilities = ["update"]
}

path "${mount}/keys/+/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
    "auto_rotate_period"     = []
  }
}

path "${mount}/keys/+/trim" {
  capabilities = ["update"]
}

path "${mount}/rewrap/+" {
  # Derived subject keys: re-wrapped inside OpenBao.
  capabilities = ["update"]
}

# Legacy (non-derived) subject keys only: see above.

path "${mount}/decrypt/+" {
  capabilities = ["update"]
}

path "${mount}/encrypt/+" {
  capabilities = ["update"]
}
