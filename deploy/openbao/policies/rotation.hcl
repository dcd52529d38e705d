# pdvault key rotation: rotates subject keys on the region's Transit mount ${mount}.
#
# Rendered once per Transit mount of the region. Lists and reads keys, adds a
# new version, sets the minimum versions and the automatic rotation period,
# trims old versions and re-wraps data keys to the newest version. It cannot
# delete, export or back up a key, or allow deletion.
#
# Re-wrapping is decrypt + encrypt, not Transit's rewrap: every wrapped data
# key is bound to its subject and region by associated data, and rewrap
# accepts none (it decrypts with no associated data and fails). So this role
# can unwrap a data key, for the moment of its re-wrap; it is a job's
# credential, held only by nodes and tools that rotate keys.

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

path "${mount}/decrypt/+" {
  capabilities = ["update"]
}

path "${mount}/encrypt/+" {
  capabilities = ["update"]
}
