"""Provisioning: key ceremony, device enrollment, USB bundles."""
