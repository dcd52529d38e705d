# pdvault key rotation: rotates subject keys on the region's Transit mount ${mount}.
#
# Rendered once per Transit mount of the region. Lists and reads keys, adds a
# new version, sets the minimum versions and the automatic rotation period,
# trims old versions and rewraps data keys to the newest version. It cannot
# unwrap a data key (no decrypt), delete, export or back up a key, or allow
# deletion.

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
  capabilities = ["update"]
}
