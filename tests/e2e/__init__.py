"""End-to-end tests: real external programs (aider, the proxy) against the simulator."""
