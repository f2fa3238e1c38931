"""Datapaths: where egress rules take effect and where the NAT table lives."""
