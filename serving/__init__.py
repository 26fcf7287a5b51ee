"""State, the BentoML service, the CLI, batch scanning, intelligence and reports."""
