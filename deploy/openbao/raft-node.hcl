# One node of a region's three-node OpenBao cluster: integrated raft storage,
# TLS on the API and between the nodes. Each region has its own cluster, in
# the region; it holds that region's Transit mounts and nothing else.
#
# Render it per node with envsubst (the ${...} below are environment variables):
#
#   BAO_NODE_ID=openbao-de-1 BAO_NODE_HOST=openbao-de-1.internal \
#   BAO_API_PORT=8200 BAO_CLUSTER_PORT=8201 BAO_LISTEN=0.0.0.0 \
#   BAO_PEER_1=openbao-de-1.internal:8200 BAO_PEER_2=openbao-de-2.internal:8200 \
#   BAO_PEER_3=openbao-de-3.internal:8200 \
#   BAO_DATA_DIR=/var/lib/openbao/raft BAO_TLS_DIR=/etc/openbao/tls \
#     envsubst < raft-node.hcl > /etc/openbao/server.hcl
#
# and start it with the seal of your choice beside it:
#
#   bao server -config=/etc/openbao/server.hcl -config=/etc/openbao/seal.hcl
#
# (seal-transit.hcl; deploy/README.md explains the choice). TLS files:
# BAO_TLS_DIR/tls.crt and tls.key, a certificate for BAO_NODE_HOST issued by the
# region's OpenBao CA, whose certificate is BAO_TLS_DIR/ca.crt. The same files
# serve raft's join requests. tests/integration/test_raft.py runs this file,
# rendered for three nodes on loopback.

storage "raft" {
  path    = "${BAO_DATA_DIR}"
  node_id = "${BAO_NODE_ID}"

  # Every node tries every member until one of them, the leader, lets it in.
  retry_join {
    leader_api_addr     = "https://${BAO_PEER_1}"
    leader_ca_cert_file = "${BAO_TLS_DIR}/ca.crt"
  }
  retry_join {
    leader_api_addr     = "https://${BAO_PEER_2}"
    leader_ca_cert_file = "${BAO_TLS_DIR}/ca.crt"
  }
  retry_join {
    leader_api_addr     = "https://${BAO_PEER_3}"
    leader_ca_cert_file = "${BAO_TLS_DIR}/ca.crt"
  }
}

listener "tcp" {
  address         = "${BAO_LISTEN}:${BAO_API_PORT}"
  cluster_address = "${BAO_LISTEN}:${BAO_CLUSTER_PORT}"
  tls_cert_file   = "${BAO_TLS_DIR}/tls.crt"
  tls_key_file    = "${BAO_TLS_DIR}/tls.key"
  tls_min_version = "tls12"
}

# What the other nodes and the clients are told to use: a standby forwards
# requests to the active node over cluster_addr (mutual TLS set up by OpenBao).
api_addr     = "https://${BAO_NODE_HOST}:${BAO_API_PORT}"
cluster_addr = "https://${BAO_NODE_HOST}:${BAO_CLUSTER_PORT}"

ui        = false
log_level = "info"
