# Auto-unseal of a region's OpenBao cluster by the Transit engine of a separate
# OpenBao (the "seal cluster"), which holds only the unseal keys of the regions'
# clusters and is run by other people than the regions' operators. The region's
# cluster asks it to unwrap its root key at every start: no person types unseal
# keys, and no unseal key is stored beside the cluster it opens.
#
# The seal cluster's token goes in the server's environment (VAULT_TOKEN, or
# BAO_TOKEN for recent releases), never in this file; a periodic token limited to
# encrypt/decrypt on this key:
#   path "transit/encrypt/autounseal-de" { capabilities = ["update"] }
#   path "transit/decrypt/autounseal-de" { capabilities = ["update"] }
# The alternative is a cloud KMS seal (awskms, gcpckms, azurekeyvault, ocikms, or
# pkcs11 for an HSM): same shape, the KMS key's policy playing the token's part.
seal "transit" {
  address         = "https://openbao-seal.example.net:8200"
  mount_path      = "transit/"
  key_name        = "autounseal-de"
  disable_renewal = "false"
  tls_ca_cert     = "/etc/openbao/seal/ca.crt"
}
