# pdvault eraser: destroys subject keys on the region's Transit mount ${mount}.
#
# Rendered once per Transit mount of the region. The only credential that can
# delete a key: it reads the key's versions, allows its deletion, deletes it,
# and then asks for an unwrap to record the key service's refusal as evidence;
# it lists the mount's keys to find those a crash left without a subject.
# It cannot create keys, wrap data keys, rotate, export or back up keys.

path "${mount}/keys" {
  # Listing finds keys a crash left without their subject (the orphan reaper).
  capabilities = ["list"]
}

path "${mount}/keys/+" {
  capabilities = ["read", "delete"]
}

path "${mount}/keys/+/config" {
  # Only the switch that allows deletion; never exportable or plaintext backup.
  capabilities = ["update"]
  allowed_parameters = {
    "deletion_allowed" = [true]
  }
}

path "${mount}/decrypt/+" {
  capabilities = ["update"]
}
