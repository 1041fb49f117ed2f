"""What every app of the portal shares at the web's edge: pagination, throttles, request
parsing and limits, and the one error path. It imports none of the portal's apps."""
