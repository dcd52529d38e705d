# Every pdvault role: renew and look up its own token (AppRole logins renew
# their token as it ages and log in again when it can no longer be renewed).

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
