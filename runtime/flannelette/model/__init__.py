"""The model, pure and shared by every side: net-conf, leases, the plan, and problems a person can act on."""
