"""Values shared by the installer tests."""

TOKEN = "cet_unit-test-enrollment-token-0123456789"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3mXv4lFm4tZkC8cUa3Xj0bYv6y0H2cW1s0dJk9lq3e test"
