"""portalctl: the cluster portal's command line client (REST API and job websockets)."""
